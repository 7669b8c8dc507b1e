"""Calibration within a memory budget (edgekit.compress.calib_memory, edgekit.memory), and sentinel values
(edgekit.compress.sentinels) kept out of the ranges, through `quantize_int8`."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from models import resnet_blocks, smooth_images
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from edgekit.artifact import InputSpec, TensorSpec
from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples
from edgekit.export.onnx import ExportConfig, export


def scales(path) -> dict[str, np.ndarray]:
    """Every scale initializer of a QDQ model, by name."""
    graph = onnx.load(str(path)).graph
    return {i.name: numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_scale")}


def run(path, feeds) -> np.ndarray:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_calib_memory_reads_sizes():
    assert Int8Config(calib_memory="2G").calib_memory == 2 << 30
    assert Int8Config(calib_memory="1.5MiB").calib_memory == 3 << 19
    assert Int8Config(calib_memory=4096).calib_memory == 4096
    with pytest.raises(ValidationError, match="not a size"):
        Int8Config(calib_memory="lots")


def test_small_budget_calibrates_in_chunks_with_the_same_minmax_scales(tmp_path):
    module, shapes = resnet_blocks()
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", *shapes[0][1:]])])
    src = export(module, spec, tmp_path, ExportConfig(), 1)
    calib = Samples({"x": smooth_images(24, seed=1)}, None)
    # the calibrated ranges, as calibrated; the budget calibration's alone (AdaRound's share: test_adaround)
    cfg = Int8Config(calibration="minmax", range_search=False, adaround=False)
    whole = quantize_int8(src, tmp_path / "whole.onnx", calib, cfg, None)
    # a few samples' activations: the 24 samples cannot be held at once
    per_sample = whole["calibration_memory"]["bytes_per_sample"]
    small = cfg.model_copy(update={"calib_memory": 5 * per_sample})
    chunked = quantize_int8(src, tmp_path / "chunked.onnx", calib, small, None)

    assert whole["calibration_memory"]["samples_per_run"] == Int8Config().calib_batch
    memory = chunked["calibration_memory"]
    assert memory["budget_bytes"] == 5 * per_sample
    assert memory["bytes_per_sample"] == per_sample > 0
    assert memory["samples_per_run"] == 2 and memory["runs"] == 1 + 12  # the first sample alone
    a, b = scales(tmp_path / "whole.onnx"), scales(tmp_path / "chunked.onnx")
    assert a.keys() == b.keys() and a
    for name in a:  # min/max ranges merge exactly
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def masked_attention(path) -> None:
    """x [b, 8, 16] -> x@Wq -> scores + mask (0 or float32's minimum) -> Softmax -> @ (x@Wv)."""
    rng = np.random.default_rng(0)
    wq = numpy_helper.from_array((rng.standard_normal((16, 8)) / 4).astype(np.float32), "wq")
    wk = numpy_helper.from_array((rng.standard_normal((16, 8)) / 4).astype(np.float32), "wk")
    wv = numpy_helper.from_array((rng.standard_normal((16, 16)) / 4).astype(np.float32), "wv")
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Add", ["scores", "mask"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("MatMul", ["probs", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "masked_attention",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", 1, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16])],
        [wq, wk, wv],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def attention_feeds(n: int, seed: int) -> dict[str, np.ndarray]:
    """Inputs with the last 0-5 of 8 positions padded, masked with float32's minimum."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((n, 1, 8), np.float32)
    for i, pad in enumerate(rng.integers(0, 6, n)):
        mask[i, 0, 8 - pad :] = np.finfo(np.float32).min
    return {"x": rng.standard_normal((n, 8, 16)).astype(np.float32), "mask": mask}


def test_attention_mask_is_left_float_and_named(tmp_path):
    masked_attention(tmp_path / "fp32.onnx")
    calib = Samples(attention_feeds(32, seed=1), None)
    # every op quantized (a transformer recognized as such has only its MatMuls quantized and
    # calibrated, so its mask never meets a range): the mask must still be found and left float
    every_op = Int8Config(transformer=False)
    summary = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib, every_op, None)

    left = summary["left_float"]
    assert any(line.startswith("mask: additive attention mask (min -3.4") for line in left), left
    assert any(line.startswith("masked: additive attention mask") for line in left), left
    assert summary["quantized_ops"].get("MatMul", 0) >= 3
    feeds = attention_feeds(16, seed=2)
    fidelity = sqnr_db(run(tmp_path / "fp32.onnx", feeds), run(tmp_path / "int8.onnx", feeds))
    assert 15 < fidelity < 80


def test_sentinel_values_are_told_from_real_activations():
    from edgekit.compress.sentinels import reason

    rng = np.random.default_rng(0)
    scores = rng.standard_normal(10_000).astype(np.float32)
    padded = np.where(rng.random(10_000) < 0.3, np.float32(-1e9), scores).astype(np.float32)
    assert "min -1e+09" in reason(padded)
    assert "min -3.4e+38" in reason(np.where(padded < -1, np.finfo(np.float32).min, padded))
    assert "non-finite" in reason(np.append(scores, np.float32("-inf")))
    assert reason(scores) is None
    assert reason(np.exp(3 * scores)) is None  # a heavy tail is not a sentinel
    assert reason(np.append(scores, np.float32(1e-30))) is None  # nor a tiny value near zero


def test_runs_over_data_take_as_many_samples_as_the_budget_fits(tmp_path, monkeypatch):
    # the export check and the evaluation run a model on many samples at once; a 640x640 detector
    # computes a GB a sample, so the budget, not a sample count, decides how many go in one run
    from edgekit.memory import graph_bytes_per_sample, run_batch

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8, 8])
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Neg", ["h"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    onnx.save(model, tmp_path / "m.onnx")

    per_sample = graph_bytes_per_sample(tmp_path / "m.onnx")
    assert per_sample == 2 * 4 * 8 * 8 * 4  # h (by shape inference) and y, float32, one sample
    for budget, batch in ((str(per_sample * 5), 5), ("1G", 32), ("100", 1)):
        monkeypatch.setenv("EDGEKIT_CALIB_MEMORY", budget)
        assert run_batch(tmp_path / "m.onnx", 32) == batch


def test_mse_and_mean_minmax_ranges_sit_inside_the_minmax_ones(tmp_path):
    """Each activation's least-error range clips its tail (narrower than min/max somewhere, never
    wider); the mean of the samples' extremes is never wider either; both models stay faithful."""
    module, shapes = resnet_blocks()
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", *shapes[0][1:]])])
    src = export(module, spec, tmp_path, ExportConfig(), 1)
    calib = Samples({"x": smooth_images(24, seed=1)}, None)
    found = {}
    for method in ("minmax", "mse", "mean_minmax"):
        cfg = Int8Config(calibration=method, range_search=False)  # the calibrated ranges, as calibrated
        quantize_int8(src, tmp_path / f"{method}.onnx", calib, cfg, None)
        found[method] = {k: v for k, v in scales(tmp_path / f"{method}.onnx").items() if v.ndim == 0}
    assert found["mse"].keys() == found["minmax"].keys() and len(found["minmax"]) > 4
    for method in ("mse", "mean_minmax"):
        assert all(found[method][k] <= found["minmax"][k] * (1 + 1e-6) for k in found["minmax"]), method
        assert any(found[method][k] < 0.95 * found["minmax"][k] for k in found["minmax"]), method
    feeds = {"x": smooth_images(8, seed=2)}
    for method in ("mse", "mean_minmax"):
        assert sqnr_db(run(src, feeds), run(tmp_path / f"{method}.onnx", feeds)) > 15, method
