"""Weight sparsity: unstructured magnitude (`--sparsity 0.5`) or 2:4 semi-structured (`--sparsity 2:4`).

Zeros are written into the dense weights; nothing is removed. ONNX stores them dense and ONNX Runtime
and OpenVINO on CPU run dense kernels, so the model is neither smaller on disk (only when compressed)
nor faster; only TensorRT on Ampere or newer GPUs runs 2:4 weights on sparse tensor cores. The
manifest says so next to the sparsity reached per layer type.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.errors import EdgekitError

NOTE = (
    "sparse weights are stored dense: the ONNX file is the same size (smaller only when compressed) "
    "and ONNX Runtime / OpenVINO on CPU run dense kernels, so latency does not change; only TensorRT "
    "on Ampere or newer NVIDIA GPUs runs 2:4 sparse weights faster"
)


class SparsityConfig(BaseModel):
    """`amount`: fraction of each layer's weights zeroed by magnitude; or `pattern` "2:4": in each
    group of 4 consecutive weights along the input dimension, the 2 largest are kept. Written
    alone (`sparsity: 0.5`, `--sparsity 2:4`) it is the one or the other."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    amount: float | None = Field(None, gt=0, lt=1)
    pattern: Literal["2:4"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        """`2:4` is the pattern, a number the amount."""
        if isinstance(value, str) and value.strip() == "2:4":
            return {"pattern": "2:4"}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"amount": value}
        return value

    @model_validator(mode="after")
    def _one(self) -> SparsityConfig:
        if (self.amount is None) == (self.pattern is None):
            raise ValueError("give one of amount (a fraction like 0.5) or pattern 2:4")
        return self

    @classmethod
    def parse(cls, text: str) -> SparsityConfig:
        if text.strip() == "2:4":
            return cls(pattern="2:4")
        try:
            amount = float(text)
        except ValueError:
            raise EdgekitError(
                f"--sparsity {text!r} is neither a fraction like 0.5 nor the pattern 2:4."
            ) from None
        if not 0 < amount < 1:
            raise EdgekitError(f"--sparsity {text} must be a fraction between 0 and 1 (exclusive), or 2:4.")
        return cls(amount=amount)


def sparsify(module, cfg: SparsityConfig, skip: list) -> dict:
    """Zero weights of every conv and linear layer of `module` (in place) except those in `skip`;
    return the sparsity reached per layer type, the layers left dense and why, and the note."""
    from torch import nn
    from torch.nn.utils import prune

    stats: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # layers, weights, zeros
    dense = {}
    for name, m in module.named_modules():
        if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or any(m is s for s in skip):
            continue
        if cfg.pattern:
            if _fan_in(m) % 4:
                dense[name] = f"{_fan_in(m)} inputs per group, not a multiple of 4"
                continue
            _two_of_four(m)
        else:
            prune.l1_unstructured(m, "weight", amount=cfg.amount)
            prune.remove(m, "weight")  # permanent: the mask is folded into the weight
        s = stats[type(m).__name__]
        s[0], s[1], s[2] = s[0] + 1, s[1] + m.weight.numel(), s[2] + int((m.weight == 0).sum())
    return {
        "by_layer_type": {
            k: {"layers": n, "weights": w, "sparsity": round(z / w, 4)} for k, (n, w, z) in stats.items()
        },
        "left_dense": dense,
        "note": NOTE,
    }


def _fan_in(m) -> int:
    from torch import nn

    return m.in_features if isinstance(m, nn.Linear) else m.in_channels // m.groups


def groups_of_four(weight):
    """The weight as rows of 4 consecutive input-dimension values, output and kernel positions
    apart (the layout NVIDIA's sparse kernels use: input channels innermost)."""
    w = weight.movedim(1, -1) if weight.ndim > 2 else weight
    return w.reshape(-1, 4)


def _two_of_four(m) -> None:
    """Keep the 2 largest-magnitude weights of every group of 4 along the input dimension."""
    import torch

    with torch.no_grad():
        groups = groups_of_four(m.weight)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(
            1, groups.abs().topk(2, dim=1).indices, True
        )
        moved = m.weight.shape if m.weight.ndim == 2 else m.weight.movedim(1, -1).shape
        keep = keep.reshape(moved)
        m.weight.mul_(keep.movedim(-1, 1) if m.weight.ndim > 2 else keep)
