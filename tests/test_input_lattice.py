"""A picture normalized per channel reaches its first INT8 convolution as its exact 8-bit levels
(edgekit.compress.input_lattice)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import input_lattice
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
# 8-bit weights on any CPU (the Q/DQ are computed literally): on an AVX2-only one the pair-bounded
# weights of its own form round the stem coarser, and that rounding is in both sides of the comparison
BASE = dict(
    calibration="minmax",
    adaround=False,
    range_search=False,
    equalize_activations=False,
    target_cpu="x86-vnni",
)


def _pixels(n: int, seed: int, channels_last: bool = False) -> np.ndarray:
    """N 16x16 RGB pictures of 8-bit pixels (smooth gradients with noise, black and white in each)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 16)
    base = rng.uniform(0, 255, (n, 3, 1, 1)) * ramp[None, None, :, None] + rng.uniform(0, 255, (n, 3, 1, 1))
    p = np.clip(np.round(base / 2 + rng.normal(0, 20, (n, 3, 16, 16))), 0, 255)
    p[0, :, 0, 0], p[0, :, -1, -1] = 0, 255
    return p.transpose(0, 2, 3, 1) if channels_last else p


def _normalized(p: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """P as torchvision's ToTensor and Normalize give it (ImageNet mean and std, fp32)."""
    shape = (1, 1, 1, 3) if channels_last else (1, 3, 1, 1)
    return (
        (p.astype(np.float32) / 255 - MEAN.reshape(shape).astype(np.float32)) / STD.reshape(shape)
    ).astype(np.float32)


def _stem(path, channels_last: bool = False):
    """x [N, 3, 16, 16] (or [N, 16, 16, 3] and a Transpose) -> 3x3 Conv, stride 2, padded (8 channels)
    -> Relu -> 1x1 Conv (4 channels)."""
    rng = np.random.default_rng(0)
    first = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])] if channels_last else []
    graph = helper.make_graph(
        [
            *first,
            helper.make_node(
                "Conv", ["nchw" if first else "x", "w", "b"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]
            ),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["y"]),
        ],
        "g",
        [
            helper.make_tensor_value_info(
                "x", TensorProto.FLOAT, ["N", 16, 16, 3] if first else ["N", 3, 16, 16]
            )
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
        [
            numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b"),
            numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _run(path, x, *extra: str) -> list[np.ndarray]:
    model = onnx.load(str(path))
    model.graph.output.extend(helper.make_tensor_value_info(e, TensorProto.FLOAT, None) for e in extra)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # Q/DQ as written
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def test_imagenet_normalized_pixels_are_found_on_one_grid_per_channel():
    x = _normalized(_pixels(32, 0))
    found = input_lattice.grids(x, 1)
    assert found is not None
    np.testing.assert_allclose([g.step for g in found], 1 / (255 * STD), rtol=1e-4)
    np.testing.assert_allclose([g.origin for g in found], -MEAN / STD, atol=1e-4)
    assert (
        input_lattice.grids(x + np.random.default_rng(0).normal(0, 1e-3, x.shape).astype(np.float32), 1)
        is None
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_fold_computes_the_same_function_on_integer_levels(tmp_path, channels_last):
    """The convolution reading the levels gives fp32's outputs where it reads no padding, and near
    them where it does (its border reads a grey, not the mean colour); the levels are whole numbers,
    what INT8 at scale 1 holds exactly, about centred on their zero point."""
    x = _normalized(_pixels(16, 1, channels_last), channels_last)
    fp32 = _stem(tmp_path / "fp32.onnx", channels_last)
    done = input_lattice.fold(fp32, tmp_path / "levels.onnx", Samples({"x": x}, None))
    zero = round(float(np.mean(MEAN * 255)))  # the mean of the channels' levels of zero: 114
    assert done == {"x": {"channels": 3, "levels": "x_edgekit_levels", "zero_point": zero}}
    ref = _run(fp32, x)[0]
    got, levels = _run(tmp_path / "levels.onnx", x, "x_edgekit_levels")
    # stride 2, padding 1: output row and column 0 read the padding, no other does
    np.testing.assert_allclose(got[:, :, 1:, 1:], ref[:, :, 1:, 1:], atol=1e-4 * np.abs(ref).max())
    assert np.abs(got - ref).mean() < 0.05 * np.abs(ref).mean()
    assert np.abs(levels - np.round(levels)).max() < 1e-3
    pixels = _pixels(16, 1, channels_last)
    np.testing.assert_allclose(
        levels, (pixels.transpose(0, 3, 1, 2) if channels_last else pixels) - zero, atol=1e-3
    )


def test_an_input_one_scale_holds_exactly_or_that_is_all_ties_is_left_as_it_is(tmp_path):
    """p / 128 - 127 / 128 (EfficientNet-Lite's) is one grid with a whole-level origin; p / 127.5 - 1
    (mean and std 0.5) has its zero half way between two levels, where one QuantizeLinear cannot
    compute the levels; continuous data is no grid: none is folded."""
    fp32 = _stem(tmp_path / "fp32.onnx")
    shared = ((_pixels(16, 2) - 127) / 128).astype(np.float32)
    ties = (_pixels(16, 2) / 127.5 - 1).astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 1, (16, 3, 16, 16)).astype(np.float32)
    for x in (shared, ties, noise):
        assert input_lattice.fold(fp32, tmp_path / "levels.onnx", Samples({"x": x}, None)) == {}


def test_int8_rounds_the_picture_not_at_all_where_one_scale_moved_it(tmp_path):
    """In the INT8 model the first convolution reads every pixel's own level (one per-channel
    QuantizeLinear in place of the Mul and Add); with --no-input-levels one scale over the three
    channels' grids moves pixels by up to half a level, and the first layer's output error shows it
    (where it reads no padding: its border reads a grey, the fold's test)."""
    x = _normalized(_pixels(64, 3))
    fp32 = _stem(tmp_path / "fp32.onnx")
    made = {}
    for on in (True, False):
        out = tmp_path / f"int8_{on}.onnx"
        cfg = Int8Config(**BASE, input_levels=on, input_grid=False)
        made[on] = (out, quantize_int8(fp32, out, Samples({"x": x}, None), cfg, None))
    assert made[True][1]["input_levels"]["quantize_per_channel"] == 1
    assert "input_levels" not in made[False][1]
    graph = onnx.load(str(made[True][0])).graph
    assert not {"Mul", "Add"} & {n.op_type for n in graph.node}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("x"))
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    levels = _run(made[True][0], x, dq.output[0])[1]
    np.testing.assert_array_equal(levels, _pixels(64, 3) - made[True][1]["input_levels"]["x"]["zero_point"])
    ref = _run(fp32, x, "c")[1][:, :, 1:, 1:]  # where the first convolution reads no padding
    error = {}
    for on, (path, _) in made.items():  # its output (the Relu left to its QuantizeLinear)
        first = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv").output[0]
        error[on] = np.abs(_run(path, x, first)[1][:, :, 1:, 1:] - ref).mean()
    assert error[True] < 0.75 * error[False]  # the INT8 weights' rounding is in both


def test_an_nhwc_picture_keeps_its_levels_without_the_slow_per_channel_quantizer(tmp_path):
    """A channels-last input reaches the levels through a Transpose, which ONNX Runtime moves after
    the QuantizeLinear: a per-channel one would then quantize along the last axis, per element (a
    224x224 MobileNetV2 1.44x fp32's time). The Mul and Add stay before one per-tensor
    QuantizeLinear, and the first convolution still reads every pixel's own level."""
    pixels = _pixels(64, 3, channels_last=True)
    x = _normalized(pixels, channels_last=True)
    fp32 = _stem(tmp_path / "fp32.onnx", channels_last=True)
    out = tmp_path / "int8.onnx"
    cfg = Int8Config(**BASE, input_grid=False)
    summary = quantize_int8(fp32, out, Samples({"x": x}, None), cfg, None)
    assert summary["input_levels"]["quantize_per_channel"] == 0
    graph = onnx.load(str(out)).graph
    assert {"Mul", "Add"} <= {n.op_type for n in graph.node}
    q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("x"))
    assert not any(a.name == "axis" for a in q.attribute)  # one scale
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
    levels = _run(out, x, dq.output[0])[1]
    zero = summary["input_levels"]["x"]["zero_point"]
    np.testing.assert_array_equal(levels, pixels.transpose(0, 3, 1, 2) - zero)
