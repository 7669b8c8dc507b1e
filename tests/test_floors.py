"""Honest failure (issue 13, item 5): a compressed model below its fidelity floor is written, but
compress exits 1 with one sentence naming the metric, the value, the floor and the layer where the
error grows; `--min-fidelity` moves or turns off the floors; every compressed model is timed against
its fp32 parent, and one that is not faster says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from edgekit import floors
from edgekit.artifact import read_manifest
from edgekit.errors import EdgekitError
from edgekit.pipeline import warnings


class Cancel(nn.Module):
    """Class scores that ride on a large term and its cancellation: exact in fp32, lost in INT8 (the
    sum is quantized on the large term's scale before the last layer; after it, the ops would stay
    float, edgekit.compress.output_tail)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.small = nn.Linear(16, 4)
        self.big = nn.Linear(16, 4)
        self.out = nn.Linear(4, 4)
        with torch.no_grad():
            self.out.weight.copy_(torch.eye(4) + 0.01 * torch.randn(4, 4))
            self.out.bias.zero_()

    def forward(self, x):
        big = self.big(x) * 1000
        return self.out((self.small(x) + big) - big)


@pytest.fixture(scope="module")
def cancel(tmp_path_factory, edgekit):
    """The model exported once (cancel/fp32/model.onnx, which compress imports as it is) and its data."""
    root = tmp_path_factory.mktemp("cancel")
    program = torch.export.export(Cancel().eval(), (torch.randn(1, 16),))
    torch.export.save(program, str(root / "cancel.pt2"))
    rng = np.random.default_rng(0)
    for name in ("calib", "eval"):
        np.savez(root / f"{name}.npz", x=rng.standard_normal((64, 16)).astype(np.float32))
    r = edgekit("export", root / "cancel.pt2", "-o", root / "fp32")
    assert r.returncode == 0, r.stderr
    return root


def _compress(edgekit, cancel, out, *args):
    data = ("--calib", cancel / "calib.npz", "--eval", cancel / "eval.npz")
    return edgekit("compress", cancel / "fp32" / "model.onnx", "--int8", *data, "-o", out, *args)


def test_below_the_floor_is_written_and_exits_1_naming_metric_value_and_layer(edgekit, cancel, work):
    r = _compress(edgekit, cancel, work / "out")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), r.stderr
    manifest = read_manifest(work / "out")  # written, files and hashes intact
    assert (work / "out" / "model.onnx").exists()
    int8 = manifest.verification["int8"]
    miss = next(x for x in int8["floors"] if not x["met"])
    assert miss["metric"] == "top1_agreement" and miss["floor"] == floors.DEFAULTS["classes"]
    sentence = lines[0]
    assert "was written" in sentence and "top-1 agreement" in sentence
    assert f"{miss['value']:.3g}" in sentence and "below the floor 0.8" in sentence
    assert int8["probe"]["worst"] and int8["probe"]["worst"][0] in sentence
    assert "--min-fidelity" in sentence and "`edgekit sensitivity`" in sentence


def test_min_fidelity_0_turns_the_floors_off_and_the_speed_is_recorded(edgekit, cancel, work):
    r = _compress(edgekit, cancel, work / "out", "--min-fidelity", "0")
    assert r.returncode == 0, r.stderr
    manifest = read_manifest(work / "out")
    int8 = manifest.verification["int8"]
    assert int8["floors"] == [] and "probe" not in int8
    speed = int8["speed"]
    assert {"fp32_ms", "ms", "ratio", "faster", "runtime", "batch"} <= set(speed)
    assert ("is not faster than its fp32 parent" in r.stderr) == (not speed["faster"]), r.stderr
    # the warning a record that says "not faster" gets, whatever this machine measured
    slower = manifest.model_copy(deep=True)
    slower.verification["int8"]["speed"].update(faster=False, ms=2.0, fp32_ms=1.0, ratio=2.0)
    (line,) = warnings(slower, "out")
    assert line.startswith(
        "out (int8) is not faster than its fp32 parent in ONNX Runtime (CPU): 2 ms vs 1 ms"
    )
    assert line.endswith("try `--target openvino`: OpenVINO has INT8 kernels ORT lacks.")
    masked = manifest.model_copy(deep=True)
    masked.verification["int8"]["speed"].update(faster=False, ms=2.0, fp32_ms=1.0, kernels="x86-sse")
    (line,) = warnings(masked, "out")
    assert line.startswith(
        "out (int8) is not faster than its fp32 parent in ONNX Runtime (CPU) on x86-sse's kernels:"
    )
    # without VNNI, 8-bit multiply-adds may gain nothing: said where the timing ran on such kernels
    assert "Without VNNI (x86-sse) an 8-bit multiply-add may cost what an fp32 one does" in line
    masked.verification["int8"]["speed"].update(kernels="x86-vnni")
    (line,) = warnings(masked, "out")
    assert "Without VNNI" not in line
    faster = manifest.model_copy(deep=True)
    faster.verification["int8"]["speed"].update(faster=True)
    assert warnings(faster, "out") == []


def test_a_floor_for_one_output_by_name(edgekit, cancel, work):
    r = _compress(edgekit, cancel, work / "out", "--min-fidelity", "output_0=0")
    assert r.returncode == 0, r.stderr


def test_a_miss_on_random_inputs_is_a_warning(edgekit, cancel, work):
    """Noise is not the model's data: the floor is recorded, the miss is said, the exit is 0."""
    model = cancel / "fp32" / "model.onnx"
    r = edgekit("compress", model, "--int8", "--calib", "random", "-o", work / "out")
    assert r.returncode == 0, r.stderr
    assert "on random inputs" in r.stderr and "--eval" in r.stderr
    int8 = json.loads((work / "out" / "edgekit.json").read_text())["verification"]["int8"]
    assert any(not x["met"] for x in int8["floors"])


@pytest.mark.parametrize("value", ["1.5", "classes=-1", "nan", "inf", "-1", "embedding=abc", "=0.5"])
def test_a_bad_min_fidelity_is_one_sentence(edgekit, cancel, work, value):
    r = _compress(edgekit, cancel, work / "out", "--min-fidelity", value)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and "--min-fidelity" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert not (work / "out").exists()


def test_parse_and_judge():
    assert floors.parse([]) == floors.DEFAULTS
    some = floors.parse(["0.9", "other=20", "logits=0.5"])
    assert some["classes"] == some["embedding"] == some["accuracy"] == 0.9
    assert some["other"] == 20 and some["logits"] == 0.5
    assert set(floors.parse(["0"]).values()) == {0}
    with pytest.raises(EdgekitError, match="fraction"):
        floors.parse(["classes=20"])
    quality = {
        "fidelity": {"output_0": {"kind": "classes", "top1_agreement": 0.7, "name": "logits"}},
        "top1": 0.72,
        "parent_top1": 0.75,
    }
    (record,) = floors.judge(quality, floors.DEFAULTS)  # with labels: the top-1 kept, 0.96 >= 0.95
    assert record["metric"] == "top1 kept" and record["met"]
    (record,) = floors.judge({"fidelity": quality["fidelity"]}, floors.DEFAULTS)
    assert record["metric"] == "top1_agreement" and not record["met"]
    assert floors.judge({"fidelity": quality["fidelity"]}, floors.parse(["logits=0.6"]))[0]["met"]


def test_a_floor_for_an_output_the_model_lacks_is_refused(edgekit, cancel, work):
    r = _compress(edgekit, cancel, work / "out", "--min-fidelity", "logits=0.5")
    assert r.returncode == 2, r.stderr
    assert "'logits'" in r.stderr and "output" in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (work / "out").exists()


def test_edgekit_yaml_sets_the_floors(tmp_path):
    """data.min_fidelity mirrors --min-fidelity: a number or {kind or output: floor}; a bad one is a
    sentence naming the key and its line."""
    from edgekit.config import load
    from edgekit.run import _compress_request

    for name in ("model.pt2", "calib.npz"):
        (tmp_path / name).write_bytes(b"")
    text = (
        "model: {{path: model.pt2}}\ndata:\n  calibration: calib.npz\n  min_fidelity: {}\n"
        "variants: {{int8: [int8]}}\ntargets: [{{name: cpu, variants: [int8]}}]\n"
    )
    path = tmp_path / "edgekit.yaml"
    path.write_text(text.format("{classes: 0.9, other: 20}"))
    cfg = load(path)
    req = _compress_request(cfg, tmp_path / "model.pt2", cfg.chain("int8"))
    assert req.min_fidelity["classes"] == 0.9 and req.min_fidelity["other"] == 20
    path.write_text(text.format("1.5"))
    with pytest.raises(EdgekitError, match=r"line 4: data.min_fidelity: .*fraction from 0 to 1"):
        load(path)


def test_edgekit_run_stops_at_a_variant_below_its_floor_built_or_cached(cancel, tmp_path):
    """The floor holds in `edgekit run` too, and a cached stage that missed it misses it again."""
    from edgekit.config import load
    from edgekit.run import build_variants

    path = tmp_path / "edgekit.yaml"
    path.write_text(
        f"model: {{path: {cancel / 'fp32' / 'model.onnx'}}}\n"
        f"data: {{calibration: {cancel / 'calib.npz'}, evaluation: {cancel / 'eval.npz'}}}\n"
        "variants: {int8: [int8]}\ntargets: [{name: cpu, variants: [int8]}]\n"
    )
    cfg = load(path)
    said: list[str] = []
    for _ in range(2):  # built (the artifact written, then the miss), then from the cache
        with pytest.raises(floors.FloorNotMet, match=r"^variant int8: .* top-1 agreement"):
            build_variants(cfg, tmp_path / "cache", False, said.append)
    assert len(said) == 1 and "compress: cached" in said[0]


def test_a_miss_without_class_scores_suggests_only_what_applies(edgekit, cancel, work):
    """The same model judged as a regression (--output-kind NAME=other): its miss does not point at
    an accuracy budget or `edgekit sensitivity`, which count points of top-1 and refuse it."""
    import onnx

    name = onnx.load(str(cancel / "fp32" / "model.onnx")).graph.output[0].name
    r = _compress(edgekit, cancel, work / "other", "--output-kind", f"{name}=other")
    assert r.returncode == 1, r.stderr
    sentence = r.stderr.splitlines()[0]
    assert "(other) has SQNR" in sentence and "int8: {exclude_nodes:" in sentence
    assert "--max-accuracy-drop" not in sentence and "sensitivity" not in sentence
