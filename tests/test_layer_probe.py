"""The per-layer probe (edgekit.compress.layer_probe) reads a quantized tensor as its consumers do:
where a constant factor was folded into a DequantizeLinear's scale (paddle2onnx's Hardswish ends in
/ 6, edgekit.compress.qlinear_forms folds it), the tensor is compared as that multiple, so the probe
blames the layer that adds noise, not the Mul before a folded Div (a PicoDet's probe named 40 of them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import layer_probe
from edgekit.data import Samples


def _save(nodes, inits, path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
    return path


def test_a_divide_folded_into_a_dequantize_is_compared_as_the_multiple_it_reads(tmp_path):
    """fp32: m = x * x, d = m / 6, a = d + 1, y = relu(a). The quantized graph folds the Div into
    m's DequantizeLinear (scale / 6, its output read as d) and quantizes a coarsely: the probe finds
    m exact to its rounding and names the Add, whose quantizer adds the noise."""
    f32 = lambda v: np.array(v, np.float32)  # noqa: E731
    fp32 = _save(
        [
            helper.make_node("Mul", ["x", "x"], ["m"], name="square"),
            helper.make_node("Div", ["m", "six"], ["d"], name="div"),
            helper.make_node("Add", ["d", "one"], ["a"], name="tail"),
            helper.make_node("Relu", ["a"], ["y"], name="out"),
        ],
        {"six": f32(6), "one": f32(1)},
        tmp_path / "fp32.onnx",
    )
    u8 = lambda v: np.array(v, np.uint8)  # noqa: E731
    int8 = _save(
        [
            helper.make_node("Mul", ["x", "x"], ["m"], name="square"),
            helper.make_node("QuantizeLinear", ["m", "s", "z"], ["m_q"]),
            helper.make_node("DequantizeLinear", ["m_q", "s6", "z"], ["d"]),
            helper.make_node("Add", ["d", "one"], ["a"], name="tail"),
            helper.make_node("QuantizeLinear", ["a", "coarse", "z"], ["a_q"]),
            helper.make_node("DequantizeLinear", ["a_q", "coarse", "z"], ["a_dq"]),
            helper.make_node("Relu", ["a_dq"], ["y"], name="out"),
        ],
        {"s": f32(9 / 255), "s6": f32(9 / 255 / 6), "z": u8(0), "one": f32(1), "coarse": f32(1.0)},
        tmp_path / "int8.onnx",
    )
    x = np.random.default_rng(0).uniform(-3, 3, (4, 4, 8, 8)).astype(np.float32)
    found = layer_probe.probe(fp32, int8, Samples({"x": x}, None), None)
    layers = {row["node"]: row for row in found["layers"]}
    assert layers["square"]["sqnr_db"] > 30  # 256 levels over [0, 9]: read as m / 6, not as m
    assert layers["tail"]["sqnr_db"] < 20
    assert found["worst"][0] == "tail"


def test_channels_that_are_off_do_not_set_the_median():
    """Three of five channels pruned to ~1e-6 (a BatchNorm scale of ~1e-8) and lost to rounding: the
    median is the live channels', not 0 dB; a live channel 40 dB weaker than the rest still counts."""
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (2, 5, 16, 16))
    ref[:, 2:] *= 1e-6
    out = ref + rng.normal(0, 0.01, ref.shape) * (np.arange(5) < 2).reshape(1, 5, 1, 1)
    out[:, 2:] = 0
    assert layer_probe.channel_sqnr([ref], [out]) > 30
    weak = ref.copy()
    weak[:, 2:] = rng.normal(0, 0.01, (2, 3, 16, 16))
    assert layer_probe.channel_sqnr([weak], [out]) < 1
