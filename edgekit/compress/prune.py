"""Structured (channel) pruning that really removes channels, on torch-pruning's dependency graph.

torch-pruning finds which layers must lose the same channels (residual adds, concatenations,
depthwise and grouped convs, attention projections) and rewrites them; nn.MultiheadAttention is
first rewritten as plain Linear layers (edgekit.compress.attention), which it can see through.
What edgekit adds: a target in MACs as well as a channel ratio, channel counts rounded to a
multiple (odd counts made ONNX Runtime slower than the unpruned model), the classifier found and
left alone, MACs counted by hooks (the library's counter misses Conv2d subclasses), and a .pt2 /
TorchScript model rebuilt as the eager module its `--arch` factory makes, since torch-pruning
needs real nn.Conv2d / nn.Linear layers.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit import batching
from edgekit.data import Samples, check_labels
from edgekit.errors import EdgekitError, first_line

IMPORTANCES = ("l1", "l2", "bn", "taylor")
MAX_STEPS = 40  # --prune-macs: prune in steps of at most 1/40 of the channels until MACs are low enough
TAYLOR_BATCHES = 4  # batches of data whose gradients rank channels for --importance taylor


class PruneConfig(BaseModel):
    """Remove a fraction of every prunable layer's channels (`ratio`), or as many as it takes to
    bring MACs down by `macs`; channel counts stay multiples of `round_to`."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    ratio: float | None = Field(None, gt=0, lt=1)  # --prune: fraction of every prunable layer's channels
    macs: float | None = Field(None, gt=0, lt=1)  # --prune-macs: or prune until MACs drop by this fraction
    importance: Literal[IMPORTANCES] = "l2"  # type: ignore[valid-type]
    round_to: int = Field(8, ge=1)
    ignore_layers: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_amount(self) -> PruneConfig:
        if (self.ratio is None) == (self.macs is None):
            raise ValueError("give one of ratio (--prune) or macs (--prune-macs), not both")
        return self


def prunable(module) -> bool:
    """Whether torch-pruning can see the module's layers (eager nn.Conv / nn.Linear modules)."""
    from torch import nn

    return any(isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) for m in module.modules())


def eager_module(module, arch: str | None, what: str):
    """An eager copy of `module` that torch-pruning can rewrite: a torch.export program or a
    TorchScript module keeps its weights but not its layers, so they go into `--arch`'s model."""
    if prunable(module):
        return module
    if not arch:
        raise EdgekitError(
            f"{what} needs the model's layers, which a {_kind(module)} does not keep; pass --arch "
            "package.module:factory building the same architecture, and its weights are loaded into it."
        )
    from edgekit.model import _build_arch

    eager = _build_arch(arch)
    try:
        eager.load_state_dict(dict(module.state_dict()), strict=True)
    except RuntimeError as e:
        raise EdgekitError(f"the model's weights do not fit --arch {arch}: {first_line(e)}") from None
    return eager.eval()


def _kind(module) -> str:
    return "TorchScript module" if hasattr(module, "code") else "torch.export program (.pt2)"


def count(module, example: tuple) -> dict[str, int]:
    """Parameters and MACs of one forward pass on `example` (batch 1), MACs from forward hooks on
    every conv and linear layer, subclasses included."""
    import torch
    from torch import nn

    macs = 0

    def hook(m, inputs, out):
        nonlocal macs
        if isinstance(m, nn.Linear):
            macs += out.numel() * m.in_features
        else:
            macs += out.numel() * (m.in_channels // m.groups) * int(np.prod(m.kernel_size))

    layers = [m for m in module.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for h in handles:
            h.remove()
    return {"params": sum(p.numel() for p in module.parameters()), "macs": int(macs)}


def classifier_layers(module, example: tuple) -> list:
    """The layers whose output is a model output (a classifier's out_features are its classes),
    else the last conv/linear layer run: their output channels are never pruned."""
    import torch
    from torch import nn

    from edgekit.model import flatten_outputs

    ran: list[tuple[Any, Any]] = []
    layers = [m for m in module.modules() if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]
    handles = [m.register_forward_hook(lambda m, i, o: ran.append((m, o))) for m in layers]
    try:
        with torch.no_grad():
            outputs = flatten_outputs(module(*example))
    finally:
        for h in handles:
            h.remove()
    found = [m for m, o in ran if any(o is t for t in outputs)]
    return found or [m for m, _ in ran[-1:]]


def ignored_layers(module, names: list[str]) -> list:
    """The modules named by --ignore-layer; an unknown name fails, listing some real ones."""
    by_name = dict(module.named_modules())
    missing = [n for n in names if n not in by_name]
    if missing:
        some = ", ".join(n for n in list(by_name)[1:8])
        raise EdgekitError(
            f"--ignore-layer {missing[0]!r} is not a layer of the model; its layer names look like: {some}."
        )
    return [by_name[n] for n in names]


def prune(
    module, example: tuple, cfg: PruneConfig, data: Samples | None, names: list[str], fixed: int | None = None
) -> dict:
    """Prune `module` in place; return params/MACs before and after and the channel counts per layer.
    `data` (inputs, in `names` order, run in batches of FIXED if the model's batch is fixed) gives
    the gradients --importance taylor ranks channels by."""
    import torch_pruning as tp

    if cfg.importance == "taylor" and data is None:
        raise EdgekitError(
            "--importance taylor ranks channels by gradients on data; pass --finetune or --calib data."
        )
    from edgekit.compress.attention import unfuse

    heads = unfuse(module, example)  # first, so MACs before and after count the same layers
    before = count(module, example)
    widths = _widths(module)
    keep = classifier_layers(module, example) + ignored_layers(module, cfg.ignore_layers)
    steps = 1 if cfg.ratio is not None else MAX_STEPS
    try:
        pruner = tp.pruner.MetaPruner(
            module,
            example,
            importance=_importance(cfg.importance),
            pruning_ratio=cfg.ratio if cfg.ratio is not None else 1.0,
            max_pruning_ratio=0.95,  # never remove a layer's last channels
            iterative_steps=steps,
            ignored_layers=keep,
            round_to=cfg.round_to,
            num_heads=heads,
        )
        target = before["macs"] * (1 - cfg.macs) if cfg.macs is not None else None
        for _ in range(steps):
            if cfg.importance == "taylor":
                _gradients(module, data, names, fixed)
            pruner.step()
            if target is None or count(module, example)["macs"] <= target:
                break
    except EdgekitError:
        raise
    except Exception as e:
        raise EdgekitError(
            f"torch-pruning could not prune this model ({first_line(e)}); name the layer it "
            "stumbles on with --ignore-layer."
        ) from None
    finally:
        module.zero_grad(set_to_none=True)
    module.eval()
    after, widths_after = count(module, example), _widths(module)
    if target is not None and after["macs"] > target:
        raise EdgekitError(
            f"--prune-macs {cfg.macs} cannot be reached: pruning stopped at "
            f"{after['macs'] / before['macs']:.0%} of the MACs; ask for less, or ignore fewer layers."
        )
    return {
        "params_before": before["params"],
        "params_after": after["params"],
        "macs_before": before["macs"],
        "macs_after": after["macs"],
        "macs_ratio": round(after["macs"] / before["macs"], 4),
        "channels": {n: f"{w}→{widths_after[n]}" for n, w in widths.items() if widths_after[n] != w},
    }


def _widths(module) -> dict[str, int]:
    """Output channels (features) of every conv and linear layer, by name."""
    from torch import nn

    return {
        n: m.out_channels if isinstance(m, nn.modules.conv._ConvNd) else m.out_features
        for n, m in module.named_modules()
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))
    }


def _importance(name: str):
    import torch_pruning as tp

    return {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "bn": tp.importance.BNScaleImportance,
        "taylor": tp.importance.TaylorImportance,
    }[name]()


def _gradients(module, data: Samples, names: list[str], fixed: int | None, batch: int = 32) -> None:
    """Gradients of the loss on a few batches (labels if any, else the model's own predictions)."""
    import torch

    from edgekit.model import flatten_outputs

    module.zero_grad(set_to_none=True)
    module.eval()
    step = fixed or batch
    for i, (feeds, real) in enumerate(batching.batches(data.inputs, fixed, batch)):
        if i == TAYLOR_BATCHES:
            break
        logits = flatten_outputs(module(*[torch.from_numpy(feeds[n]) for n in names]))[0][:real]
        labelled = data.labels is not None and logits.ndim == 2
        if labelled:
            check_labels(data, logits.detach().numpy())
        target = torch.from_numpy(data.labels[i * step : i * step + real]) if labelled else None
        logits = logits.reshape(-1, logits.shape[-1])
        target = target if target is not None else logits.argmax(-1).detach()
        torch.nn.functional.cross_entropy(logits, target).backward()
