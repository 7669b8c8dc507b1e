"""A graph input on the grid of 8-bit pixels keeps its pixels apart in INT8 (edgekit.compress.input_grid)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

BASE = dict(calibration="minmax", adaround=False, range_search=False, equalize_activations=False)


def _conv(path, channels_last=False, bias=0.0):
    """x [N, 3, 8, 8] (or [N, 8, 8, 3] and a Transpose, as tf2onnx writes a Keras model) -> 3x3 Conv
    (8 channels, BIAS) -> Relu."""
    w = np.random.default_rng(0).normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    first = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])] if channels_last else []
    graph = helper.make_graph(
        [
            *first,
            helper.make_node("Conv", ["nchw" if first else "x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 3] if first else ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.full(8, bias, np.float32), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.save(model, str(path))
    return path


def _dequantized_input(path, x):
    """What the INT8 model at PATH computes from X after its input's QuantizeLinear -> DequantizeLinear."""
    model = onnx.load(str(path))
    q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    model.graph.output.append(helper.make_tensor_value_info(dq.output[0], TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run([dq.output[0]], {"x": x})[0]


def _quantized(tmp_path, x, on, channels_last=False, bias=0.0):
    out = tmp_path / f"int8_{on}.onnx"
    cfg = Int8Config(**BASE, input_grid=on)
    fp32 = _conv(tmp_path / "fp32.onnx", channels_last, bias)
    return out, quantize_int8(fp32, out, Samples({"x": x}, None), cfg, None)


def test_pixels_normalized_to_minus_one_one_stay_apart(tmp_path):
    """p / 127.5 - 1 at the calibrated scale 2/255 is all ties: each of its 256 values moves by half
    a step, and those rounded the same way (to even, or by float32's rounding) merge. Off the grid
    the input keeps nearly every value distinct and rounds with less error, and the outputs stay
    close to fp32's."""
    pixels = np.random.default_rng(1).integers(0, 256, (64, 3, 8, 8))
    x = (pixels / 127.5 - 1).astype(np.float32)
    got = {on: _quantized(tmp_path, x, on) for on in (True, False)}
    moved = got[True][1]["input_scales_off_grid"]
    assert list(moved) == ["x_scale"] and moved["x_scale"] != 1
    assert "input_scales_off_grid" not in got[False][1]
    values = {on: _dequantized_input(got[on][0], x) for on in (True, False)}
    distinct = {on: len(np.unique(v)) for on, v in values.items()}
    assert distinct[True] >= 250 and distinct[False] <= 200  # 191: ties merged
    error = {on: np.abs(values[on] - x).mean() for on in (True, False)}
    assert error[True] < 0.7 * error[False]
    fp32 = ort.InferenceSession(str(tmp_path / "fp32.onnx")).run(None, {"x": x})[0]
    int8 = ort.InferenceSession(str(got[True][0])).run(None, {"x": x})[0]
    assert np.abs(int8 - fp32).mean() < 0.05 * np.abs(fp32).mean()


def test_an_input_read_through_a_transpose_is_moved_too(tmp_path):
    """A channels-last input is quantized after its Transpose: the same values, the same grid."""
    pixels = np.random.default_rng(1).integers(0, 256, (64, 8, 8, 3))
    _, summary = _quantized(tmp_path, (pixels / 127.5 - 1).astype(np.float32), True, channels_last=True)
    assert len(summary["input_scales_off_grid"]) == 1


def test_the_scale_stays_where_the_outputs_do_not_gain(tmp_path):
    """The same pixels into a model whose outputs do not read their rounding (a Relu the bias keeps
    at 0): the input rounds better off the grid, but nothing comes closer to fp32, so it stays."""
    pixels = np.random.default_rng(1).integers(0, 256, (64, 3, 8, 8))
    _, summary = _quantized(tmp_path, (pixels / 127.5 - 1).astype(np.float32), True, bias=-100.0)
    assert "input_scales_off_grid" not in summary


def test_an_input_off_any_grid_keeps_its_calibrated_scale(tmp_path):
    """Continuous data rounds about as well at any nearby scale: nothing is moved."""
    x = np.random.default_rng(2).normal(0, 1, (64, 3, 8, 8)).astype(np.float32)
    out, summary = _quantized(tmp_path, x, True)
    assert "input_scales_off_grid" not in summary
    plain, _ = _quantized(tmp_path, x, False)
    scales = [_initializer(p, "x_scale") for p in (out, plain)]
    assert scales[0] == scales[1]


def _initializer(path, name):
    return numpy_helper.to_array(next(i for i in onnx.load(str(path)).graph.initializer if i.name == name))
