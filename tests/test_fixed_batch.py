"""Models with a fixed batch size (a .pt2 exported without a dynamic batch, `--static-batch`, an
ONNX file whose first axis is a number) fed real data: every stage runs them in their own batch,
the last batch padded and its padding's outputs dropped, so the numbers are those of the same
model with a dynamic batch, and no sample is lost."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hostile import TINY_NET

CALIB = 23  # not a multiple of 4: the last batch is padded
TEST = 30
# a model whose own code takes batches of 4 only: pruning and fine-tuning must run it so too
BATCH4_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)).reshape(4, -1))


def net():
    return Net().eval()
"""


@dataclass(frozen=True)
class Fixed:
    root: Path  # static4.pt2, static1.pt2, calib.npz (CALIB samples), test.npz (TEST samples)
    top1: float  # on test.npz
    held_top1: float  # on the last 5 samples of calib.npz


@pytest.fixture(scope="module")
def fixed(tmp_path_factory) -> Fixed:
    """The tiny net exported with static batches of 4 and 1, its calibration and test data (labels:
    its own predictions, every fifth changed), and its top-1 in torch (any batch) on the test data
    and on the 5 calibration samples `compress` holds out without --eval."""
    import torch

    root = tmp_path_factory.mktemp("fixed")
    scope: dict = {}
    exec(TINY_NET, scope)
    net = scope["net"]().eval()
    for batch in (4, 1):
        ep = torch.export.export(net, (torch.zeros(batch, 1, 16, 16),))
        torch.export.save(ep, root / f"static{batch}.pt2")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((CALIB + TEST, 1, 16, 16)).astype(np.float32)
    with torch.inference_mode():
        scores = net(torch.from_numpy(x)).numpy()
    y = scores.argmax(1)
    y[::5] = (y[::5] + 1) % 3
    np.savez(root / "calib.npz", x=x[:CALIB], y=y[:CALIB])
    np.savez(root / "test.npz", x=x[CALIB:], y=y[CALIB:])
    right = scores.argmax(1) == y
    return Fixed(root, float(right[CALIB:].mean()), float(right[CALIB - 5 : CALIB].mean()))


@pytest.fixture(scope="module")
def exported4(edgekit, fixed, tmp_path_factory) -> Path:
    """The fp32 artifact of the batch-4 .pt2, verified on the calibration samples."""
    out = tmp_path_factory.mktemp("exported4") / "fp32"
    r = edgekit("export", fixed.root / "static4.pt2", "--calib", fixed.root / "calib.npz", "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / "edgekit.json").read_text())


def _assert_int8_scored_like_torch(m: dict, top1: float, samples: int) -> None:
    """fp32 scores exactly what torch scores (its batch is dynamic); INT8 within one sample."""
    check = m["verification"]["int8"]
    assert check["samples"] == samples
    assert check["parent_top1"] == pytest.approx(top1, abs=1e-9)
    assert check["top1"] == pytest.approx(top1, abs=1.01 / samples)
    (fidelity,) = check["fidelity"].values()
    assert fidelity["top1_agreement"] >= 1 - 1.01 / samples


def test_batching_pads_the_last_fixed_batch_and_drops_its_outputs():
    from edgekit import batching

    x = np.arange(6, dtype=np.float32).reshape(6, 1)
    seen = []

    def run(feeds):
        seen.append(len(feeds["x"]))
        return [feeds["x"] * 2]

    for fixed in (4, 8):
        seen.clear()
        out = batching.outputs(run, {"x": x}, fixed)
        assert set(seen) == {fixed}
        np.testing.assert_array_equal(out[0], x * 2)
    seen.clear()
    out = batching.outputs(run, {"x": x}, None, size=4)
    assert seen == [4, 2]
    np.testing.assert_array_equal(out[0], x * 2)
    padded = [feeds["x"][:, 0].tolist() for feeds, _ in batching.batches({"x": x}, 4)]
    assert padded == [[0, 1, 2, 3], [4, 5, 5, 5]]


@pytest.mark.parametrize("batch", [4, 1])
def test_pt2_with_a_fixed_batch_compresses_on_real_data(edgekit, fixed, work, batch):
    out = work / "int8"
    r = edgekit(
        "compress", fixed.root / f"static{batch}.pt2", "--int8", "--calib", fixed.root / "calib.npz",
        "--eval", fixed.root / "test.npz", "-o", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = _manifest(out)
    assert m["input_spec"]["inputs"][0]["shape"] == [batch, 1, 16, 16]
    assert m["data"]["calibration"]["count"] == CALIB
    assert m["passes"][-1]["summary"]["calibration_samples"] == CALIB
    assert m["verification"]["export"]["samples"] == CALIB
    _assert_int8_scored_like_torch(m, fixed.top1, TEST)


def test_pt2_with_a_fixed_batch_takes_its_own_input_shape(fixed):
    """--input-shape is not needed (the program records its batch), but giving it does no harm."""
    from edgekit.model import LoadOptions, load_model

    for opts in (LoadOptions(), LoadOptions(input_shapes=((4, 1, 16, 16),))):
        loaded = load_model(fixed.root / "static4.pt2", opts)
        assert loaded.input_spec.inputs[0].shape == [4, 1, 16, 16]
        assert loaded.input_spec.fixed_batch == 4


def test_static_batch_torchscript_calibrates_on_real_data(edgekit, tiny, fixed, work):
    """No --eval: the calibration data is split (18 to calibrate, 5 held out), neither a multiple of 4.
    tiny's model.ts.pt is the same net as the fixture's .pt2 files."""
    out = work / "int8"
    r = edgekit(
        "compress", tiny / "model.ts.pt", "--input-shape", "4,1,16,16", "--static-batch", "--int8",
        "--calib", fixed.root / "calib.npz", "-o", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = _manifest(out)
    assert m["input_spec"]["inputs"][0]["shape"] == [4, 1, 16, 16]
    assert (m["data"]["calibration"]["count"], m["data"]["evaluation"]["count"]) == (CALIB - 5, 5)
    assert m["verification"]["export"]["samples"] == CALIB - 5
    _assert_int8_scored_like_torch(m, fixed.held_top1, 5)


def test_onnx_with_a_fixed_batch_compresses_on_real_data(edgekit, fixed, exported4, work):
    model = exported4 / "model.onnx"
    out = work / "int8"
    r = edgekit(
        "compress",
        model,
        "--int8",
        "--calib",
        fixed.root / "calib.npz",
        "--eval",
        fixed.root / "test.npz",
        "-o",
        out,
    )
    assert r.returncode == 0, r.stderr
    m = _manifest(out)
    assert m["input_spec"]["inputs"][0]["shape"] == [4, 1, 16, 16]
    assert m["verification"]["export"]["samples"] == CALIB
    _assert_int8_scored_like_torch(m, fixed.top1, TEST)


def test_bench_eval_on_a_fixed_batch_artifact(edgekit, fixed, exported4, work):
    rows = work / "rows.json"
    r = edgekit("bench", exported4, "--eval", fixed.root / "test.npz", "--runs", 3, "--json", rows)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(rows.read_text())
    assert row["ok"] and row["batch"] == 4
    assert row["accuracy"]["samples"] == TEST
    assert row["accuracy"]["top1"] == pytest.approx(fixed.top1, abs=1e-9)


def test_run_gates_a_fixed_batch_model(edgekit, fixed, work):
    for name in ("static4.pt2", "calib.npz", "test.npz"):
        (work / name).write_bytes((fixed.root / name).read_bytes())
    (work / "edgekit.yaml").write_text(
        """\
version: 1
model: {path: static4.pt2}
data: {calibration: calib.npz, evaluation: test.npz}
variants:
  fp32: []
  int8: [int8: {}]
targets:
  - {name: cpu, runtime: ort, device: cpu, variants: [fp32, int8], seconds: 0.3, rounds: 3, warmup: 1}
gates:
  - {target: cpu, variant: int8, baseline: fp32, max_accuracy_drop: 4.0, min_accuracy: 50}
"""
    )
    r = edgekit("run", work / "edgekit.yaml", "-o", work / "results", cwd=work)
    assert r.returncode == 0, r.stdout + r.stderr
    verdict = json.loads((work / "results" / "verdict.json").read_text())
    assert verdict["passed"]
    measured = {g["metric"]: g["measured"] for g in verdict["gates"]}
    assert measured["min_accuracy"] == pytest.approx(100 * fixed.top1, abs=100 * 1.01 / TEST)
    records = [json.loads(line) for line in (work / "results" / "results.jsonl").read_text().splitlines()]
    fp32 = next(rec for rec in records if rec["variant"] == "fp32")
    assert fp32["accuracy"]["top1"] == pytest.approx(fixed.top1, abs=1e-9)


def test_prune_and_finetune_run_a_fixed_batch_model_in_its_batch(edgekit, fixed, work):
    import torch

    (work / "batch4net.py").write_text(BATCH4_NET)
    scope: dict = {}
    exec(BATCH4_NET, scope)
    torch.export.save(torch.export.export(scope["net"](), (torch.zeros(4, 1, 16, 16),)), work / "m.pt2")
    out = work / "pruned"
    r = edgekit(
        "compress", work / "m.pt2", "--arch", "batch4net:net", "--prune", "0.5", "--round-to", "1",
        "--importance", "taylor", "--finetune", fixed.root / "calib.npz", "--epochs", "1",
        "--calib", fixed.root / "calib.npz", "--eval", fixed.root / "test.npz", "-o", out, cwd=work,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    m = _manifest(out)
    tuned = next(p for p in m["passes"] if p["name"] == "finetune")["summary"]
    assert (tuned["train_samples"], tuned["held_out_samples"]) == (CALIB - 2, 2)
    assert m["verification"]["prune"]["samples"] == TEST
