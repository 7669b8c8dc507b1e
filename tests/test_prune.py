"""Structured pruning, recovery fine-tuning and weight sparsity (`compress --prune/--finetune/--sparsity`),
on the trained digits CNN and the tiny residual / depthwise models, through the real pipeline."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from models import depthwise_se, resnet_blocks
from onnx import numpy_helper

from edgekit import floors
from edgekit.artifact import read_manifest
from edgekit.compress.finetune import FinetuneConfig
from edgekit.compress.prune import PruneConfig
from edgekit.compress.sparsity import SparsityConfig, groups_of_four
from edgekit.model import LoadOptions
from edgekit.passes import from_flags
from edgekit.pipeline import CompressRequest, compress
from edgekit.runtimes import ort

ARCH = "edgekit.demo:digits_net"  # the .pt2 keeps the weights; pruning needs the eager layers


NO_FLOORS = floors.parse(["0"])  # unrecovered pruning and sparsity fall below the fidelity floors


def _compress(digits, out, min_fidelity=NO_FLOORS, **kw):
    req = CompressRequest(
        model=digits.model, out=out, calib=str(digits.calib), eval=str(digits.test), chain=from_flags(**kw)
    )
    req.load.arch = ARCH
    req.min_fidelity = min_fidelity
    return compress(req)


def _pass(manifest, name: str):
    return next(p for p in manifest.passes if p.name == name)


def _onnx_bytes(directory) -> int:
    return sum(f.bytes for f in read_manifest(directory).files)


@pytest.fixture(scope="module")
def pruned(digits, tmp_path_factory):
    """The digits CNN pruned to half its MACs, no recovery: (manifest, artifact dir). It is written,
    but below the fidelity floor (compress exits 1 with what to try)."""
    out = tmp_path_factory.mktemp("prune") / "pruned"
    with pytest.raises(floors.FloorNotMet, match=r"prune output .* below the floor .* --finetune DATA"):
        _compress(digits, out, floors.DEFAULTS, prune=PruneConfig(macs=0.5))
    return read_manifest(out), out


def test_channels_shrink_to_multiples_of_round_to(pruned):
    summary = _pass(pruned[0], "prune").summary
    assert summary["channels"], "no layer lost channels"
    for name, change in summary["channels"].items():
        before, after = map(int, change.split("→"))
        assert after < before and after % 8 == 0, f"{name}: {change}"


def test_prune_macs_reaches_its_target_and_reports_params_and_macs(pruned):
    s = _pass(pruned[0], "prune").summary
    assert s["macs_after"] <= 0.5 * s["macs_before"]
    assert s["params_after"] < s["params_before"]
    assert s["macs_ratio"] == pytest.approx(s["macs_after"] / s["macs_before"], abs=1e-4)


def test_exported_model_is_smaller_and_keeps_the_classes(pruned, digits, tmp_path):
    manifest, out = pruned
    fp32 = tmp_path / "fp32"
    compress(CompressRequest(model=digits.model, out=fp32, calib=str(digits.calib)))
    assert _onnx_bytes(out) < 0.7 * _onnx_bytes(fp32)
    x = np.load(digits.test)["x"][:4]
    assert ort.load(str(out / "model.onnx")).run({"input": x})[0].shape == (4, 10)
    assert manifest.verification["export"]["sqnr_db"] > 60  # the pruned module exported faithfully


def test_unrecovered_accuracy_is_stated_against_the_unpruned_model(pruned, digits):
    q = pruned[0].verification["prune"]
    assert q["metric"] == "top1 accuracy"
    assert q["parent_top1"] == pytest.approx(digits.top1, abs=1e-6)
    assert q["drop_points"] == pytest.approx(100 * (q["parent_top1"] - q["top1"]))


@pytest.mark.slow  # training
def test_finetune_with_distillation_recovers_within_budget(pruned, digits, tmp_path):
    """The budget is the work, not the wall clock (which only measures the CPU): one epoch over
    the given data, 90 % trained on and 10 % held out, and no more."""
    manifest = _compress(
        digits,
        tmp_path / "ft",
        prune=PruneConfig(macs=0.5),
        finetune=FinetuneConfig(data=str(digits.calib), epochs=1),
    )
    recovered, unrecovered = manifest.verification["prune"]["top1"], pruned[0].verification["prune"]["top1"]
    assert recovered >= unrecovered
    summary = _pass(manifest, "finetune").summary
    assert summary["best_epoch"] in (0, 1) and len(summary["held_out_by_epoch"]) == 2  # epoch 0 and 1
    with np.load(digits.calib) as z:
        n = len(z["x"])
    assert summary["held_out_samples"] == int(n * 0.1) and summary["train_samples"] == n - int(n * 0.1)


@pytest.mark.parametrize("build", [resnet_blocks, depthwise_se], ids=["residual", "depthwise_se"])
def test_residual_and_depthwise_models_prune_and_export_verified(build, tmp_path):
    module, shapes = build()
    path = tmp_path / "model.pt"
    torch.save(module.state_dict(), path)
    req = CompressRequest(
        model=path, out=tmp_path / "out", chain=from_flags(prune=PruneConfig(ratio=0.5, importance="bn"))
    )
    req.load.arch = f"models:{type(module).__name__}"
    req.load.input_shapes = tuple(shapes)
    manifest = compress(req)
    s = _pass(manifest, "prune").summary
    assert s["macs_after"] < s["macs_before"] and s["channels"]
    assert manifest.verification["export"]["sqnr_db"] > 60


def test_two_of_four_sparsity_holds_in_every_sparsified_onnx_weight(digits, tmp_path):
    manifest = _compress(digits, tmp_path / "s24", sparsity=SparsityConfig.parse("2:4"))
    summary = _pass(manifest, "sparsity").summary
    assert summary["by_layer_type"]["Conv2d"]["sparsity"] == pytest.approx(0.5)
    assert "dense kernels" in summary["note"]
    model = onnx.load(str(tmp_path / "s24" / "model.onnx"))
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    convs = [weights[n.input[1]] for n in model.graph.node if n.op_type == "Conv"]
    sparse = [w for w in convs if w.shape[1] % 4 == 0]  # the 1-channel stem stays dense, and says so
    assert len(sparse) == len(convs) - 1 and summary["left_dense"]
    for w in sparse:
        nonzero = (groups_of_four(torch.from_numpy(w.copy())) != 0).sum(dim=1)
        assert (nonzero == 2).all()


def test_unstructured_sparsity_reaches_its_fraction(digits, tmp_path):
    manifest = _compress(digits, tmp_path / "s50", sparsity=SparsityConfig.parse("0.5"))
    reached = _pass(manifest, "sparsity").summary["by_layer_type"]["Conv2d"]["sparsity"]
    assert reached == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--prune", "1.5"], "not in the range 0<x<1"),
        (["--prune-macs", "0"], "not in the range 0<x<1"),
        (["--finetune", "CALIB"], "add --prune"),
        (["--prune", "0.5", "--importance", "magic"], "is not one of"),
        (["--sparsity", "lots"], "neither a fraction"),
        (["--prune", "0.5", "--no-arch"], "--arch"),
    ],
    ids=["ratio", "macs", "finetune-alone", "importance", "sparsity", "pt2-without-arch"],
)
def test_bad_input_is_one_sentence_and_exit_2(edgekit, digits, tmp_path, args, words):
    args = [str(digits.calib) if a == "CALIB" else a for a in args]
    arch = [] if "--no-arch" in args else ["--arch", ARCH]
    args = [a for a in args if a != "--no-arch"]
    r = edgekit("compress", digits.model, *arch, *args, "-o", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("edgekit: error:") and words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_each_importance_criterion_ranks_channels_its_own_way():
    """l1, l2, bn and taylor (gradients on data) all prune the residual model, each keeping other
    channels; taylor without data is refused rather than silently ranked by magnitude."""
    from models import smooth_images

    from edgekit.compress import prune
    from edgekit.data import Samples
    from edgekit.errors import EdgekitError

    data = Samples({"x": smooth_images(64, seed=3)}, None)
    example = (torch.from_numpy(smooth_images(1)),)
    kept = {}
    for importance in ("l1", "l2", "bn", "taylor"):
        module, _ = resnet_blocks()
        summary = prune.prune(module, example, PruneConfig(ratio=0.5, importance=importance), data, ["x"])
        assert summary["macs_after"] < summary["macs_before"], importance
        convs = [m.weight.detach().flatten() for m in module.modules() if isinstance(m, torch.nn.Conv2d)]
        kept[importance] = torch.cat(convs)
    names = list(kept)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not torch.equal(kept[a], kept[b]), f"{a} and {b} kept the same channels"
    with pytest.raises(EdgekitError, match="taylor ranks channels by gradients"):
        prune.prune(resnet_blocks()[0], example, PruneConfig(ratio=0.5, importance="taylor"), None, ["x"])


def test_attention_is_pruned_through_its_projections(tmp_path):
    """nn.MultiheadAttention becomes qkv/proj Linear layers with the same outputs, so the embedding
    width of a transformer prunes through attention, residuals and LayerNorm; the export verifies."""
    import copy

    from models import transformer_ids

    from edgekit.compress.attention import unfuse

    module, _ = transformer_ids()
    ids = torch.randint(0, 50, (3, 16))
    unfused = copy.deepcopy(module)
    assert len(unfuse(unfused, (ids[:1],))) == 2
    assert all(not isinstance(m, torch.nn.MultiheadAttention) for m in unfused.modules())
    with torch.inference_mode():
        assert torch.allclose(module(ids), unfused(ids), atol=1e-5)
    torch.save(module.state_dict(), tmp_path / "tokens.pt")
    load = LoadOptions(arch="models:TinyTokenClassifier", input_shapes=((1, 16),), input_dtype="int64")
    req = CompressRequest(
        tmp_path / "tokens.pt", tmp_path / "out", load=load, chain=from_flags(prune=PruneConfig(ratio=0.5))
    )
    s = _pass(compress(req), "prune").summary
    # the embedding width, pruned through attention, residual adds and LayerNorm
    assert s["channels"]["encoder.layers.0.self_attn.proj"] == "32→16"
    assert s["macs_after"] < 0.5 * s["macs_before"]  # compress raised if the ONNX export had diverged


def test_cross_attention_is_left_as_it_is():
    """Only attention that runs as self-attention is rewritten; cross-attention keeps its module."""
    from edgekit.compress.attention import SelfAttention, unfuse

    class Cross(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = torch.nn.MultiheadAttention(16, 2, batch_first=True)
            self.cross = torch.nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x, memory):
            h = x + self.self_attn(x, x, x)[0]
            return h + self.cross(h, memory, memory)[0]

    torch.manual_seed(0)
    model = Cross().eval()
    example = (torch.randn(2, 5, 16), torch.randn(2, 7, 16))
    with torch.inference_mode():
        before = model(*example)
    assert len(unfuse(model, example)) == 1
    assert isinstance(model.self_attn, SelfAttention) and isinstance(model.cross, torch.nn.MultiheadAttention)
    with torch.inference_mode():
        assert torch.allclose(before, model(*example), atol=1e-5)
