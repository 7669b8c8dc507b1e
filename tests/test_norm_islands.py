"""A LayerNorm and a softmax written out as elementwise ops around reductions (jax2tf/tf2onnx's
Flax LayerNorm: E[x^2] - E[x]^2; Google's Magika) stay float in INT8, as a LayerNormalization node
does: ORT's quantizer rounded the sum of squares, the variance and each product to 8 bits per
tensor. A squeeze-and-excitation's mean or a global pooling is no such island."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress import norm_islands
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _flax_block(path) -> None:
    """Token ids [N, 8] -> embedding -> MatMul -> LayerNorm as jax2tf writes it (a mean of about 4,
    so E[x^2] - E[x]^2 cancels) -> MatMul -> a softmax written out -> y [N, 8, 10]."""
    rng = np.random.default_rng(0)

    def c(name, v):
        return numpy_helper.from_array(np.asarray(v, np.float32), name)

    inits = [
        *(c("emb", rng.normal(0, 1, (50, 16))), c("w1", rng.normal(0, 1, (16, 64)))),
        *(c("b1", 4 + rng.normal(0, 1, 64)), c("inv_n", 1 / 64), c("zero", 0), c("eps", 1e-6)),
        *(c("gamma", rng.uniform(0.5, 1.5, 64)), c("beta", rng.normal(0, 0.1, 64))),
        c("w2", rng.normal(0, 0.3, (64, 10))),
        numpy_helper.from_array(np.array([-1], np.int64), "axis"),
    ]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "x"], ["t"]),
        n("MatMul", ["t", "w1"], ["m"]),
        n("Add", ["m", "b1"], ["h"]),
        n("ReduceSum", ["h", "axis"], ["s"], keepdims=1),
        n("Mul", ["s", "inv_n"], ["mean"]),
        n("Mul", ["h", "h"], ["sq"]),
        n("ReduceSum", ["sq", "axis"], ["s2"], keepdims=1),
        n("Mul", ["s2", "inv_n"], ["ex2"]),
        n("Mul", ["mean", "mean"], ["mean2"]),
        n("Sub", ["ex2", "mean2"], ["var0"]),
        n("Max", ["zero", "var0"], ["var"]),
        n("Add", ["var", "eps"], ["ve"]),
        n("Sqrt", ["ve"], ["sd"]),
        n("Reciprocal", ["sd"], ["rstd"]),
        n("Mul", ["rstd", "gamma"], ["g"]),
        n("Sub", ["h", "mean"], ["xc"]),
        n("Mul", ["xc", "g"], ["xn"]),
        n("Add", ["xn", "beta"], ["ln"]),
        n("MatMul", ["ln", "w2"], ["logits"]),
        n("ReduceMax", ["logits"], ["mx"], axes=[-1], keepdims=1),
        n("Sub", ["logits", "mx"], ["z"]),
        n("Exp", ["z"], ["e"]),
        n("ReduceSum", ["e", "axis"], ["se"], keepdims=1),
        n("Div", ["e", "se"], ["y"]),
    ]
    save_onnx(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 10])],
        inits,
    )


def test_a_layernorm_and_a_softmax_written_out_are_found_whole(tmp_path):
    _flax_block(tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    found = [[graph.node[k].output[0] for k in island] for island in norm_islands.islands(graph)]
    norm = {"s", "mean", "sq", "s2", "ex2", "mean2", "var0", "var", "ve", "sd", "rstd", "g", "xc", "xn", "ln"}
    assert sorted(map(set, found), key=len) == [{"mx", "z", "e", "se", "y"}, norm]


def test_a_squeeze_excitation_and_a_global_pooling_are_no_islands(tmp_path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 1, 1)).astype(np.float32), "se"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "fc"),
    ]
    n = helper.make_node
    nodes = [
        n("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        n("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=1),
        n("Conv", ["m", "se"], ["e"]),
        n("Sigmoid", ["e"], ["gate"]),
        n("Mul", ["c", "gate"], ["g"]),
        n("ReduceMean", ["g"], ["p"], axes=[2, 3], keepdims=0),
        n("Gemm", ["p", "fc"], ["y"]),
    ]
    save_onnx(
        tmp_path / "se.onnx",
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    assert norm_islands.islands(onnx.load(str(tmp_path / "se.onnx")).graph) == []


def test_int8_keeps_the_statistics_float_and_the_products_int8(tmp_path):
    """No Q/DQ pair inside the islands (the normalization's input and output rounded, as around a
    LayerNormalization node), both MatMuls INT8, and the output closer to fp32's than with
    the statistics rounded (28.8 dB before)."""
    _flax_block(tmp_path / "m.onnx")
    x = np.random.default_rng(1).integers(0, 50, (200, 8))
    cfg = Int8Config(adaround=False, range_search=False)
    summary = quantize_int8(
        tmp_path / "m.onnx", tmp_path / "q.onnx", Samples({"x": x[:100]}, None), cfg, None
    )
    assert summary["float_norm_islands"] == 2 and summary["quantized_ops"] == {"MatMul": 2}
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    rounded = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    inside = {"s", "mean", "sq", "s2", "ex2", "mean2", "var0", "var", "ve", "sd", "rstd", "g", "xc", "xn"}
    assert {"t", "ln"} <= rounded and not rounded & (inside | {"mx", "z", "e", "se"})
    ref, got = (
        ort.InferenceSession(str(tmp_path / p), providers=["CPUExecutionProvider"]).run(None, {"x": x[100:]})[
            0
        ]
        for p in ("m.onnx", "q.onnx")
    )
    assert sqnr_db(ref, got) > 30
