"""INT8 of a model whose control flow (an If, as Silero VAD's LSTM sits in) reads a ReLU's output
from the graph around it: ONNX Runtime's QDQ quantizer folds the ReLU into its quantizer's clamp and
renames the convolution to write its name, so the branch read the un-rectified convolution. edgekit
gives the branch its own copy, rewired to the clamped tensor like every other reader."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import outer_reads
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _model(path) -> None:
    """x [N, 4, 16] -> Conv -> Relu -> If(mean(x) > -1e9) whose branches read the Relu's output from
    outside: then Mul by 2, else Neg."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.5, (8, 4, 3)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    floor = numpy_helper.from_array(np.array(-1e9, np.float32), "floor")
    then = helper.make_graph(
        [helper.make_node("Mul", ["r", "two"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], "conv", pads=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], "relu"),
        helper.make_node("ReduceMean", ["x"], ["m"], "mean", keepdims=0),
        helper.make_node("Greater", ["m", "floor"], ["cond"], "greater"),
        helper.make_node("If", ["cond"], ["y"], "if", then_branch=then, else_branch=other),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])],
        [w, two, floor],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_a_branch_reading_a_relu_from_outside_gets_the_rectified_tensor(tmp_path):
    _model(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).normal(size=(64, 4, 16)).astype(np.float32)
    summary = quantize_int8(
        tmp_path / "fp32.onnx", tmp_path / "int8.onnx", Samples({"x": x}, None), Int8Config(), None
    )
    ref, got = (
        ort.InferenceSession(str(tmp_path / p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for p in ("fp32.onnx", "int8.onnx")
    )
    assert ref.min() >= 0 and got.min() >= 0  # rectified (the branch doubles a ReLU output)
    assert 10 * np.log10(np.sum(ref**2) / np.sum((got - ref) ** 2)) > 25
    assert summary["subgraph_reads_guarded"] == 1


def test_only_reads_of_removable_activations_are_guarded(tmp_path):
    _model(tmp_path / "fp32.onnx")
    assert outer_reads.guard(tmp_path / "fp32.onnx", tmp_path / "g.onnx") == 1
    m = onnx.load(str(tmp_path / "g.onnx"))
    assert [n.op_type for n in m.graph.node].index("Identity") == 2  # right after the Relu
    branch = next(n for n in m.graph.node if n.op_type == "If").attribute[0].g
    assert branch.node[0].input[0] == m.graph.node[2].output[0]
    _model(tmp_path / "fp32.onnx")  # a Sigmoid's output read from a branch: ORT keeps a Sigmoid
    m = onnx.load(str(tmp_path / "fp32.onnx"))
    next(n for n in m.graph.node if n.op_type == "Relu").op_type = "Sigmoid"
    onnx.save(m, str(tmp_path / "sig.onnx"))
    assert outer_reads.guard(tmp_path / "sig.onnx", tmp_path / "g2.onnx") == 0


def test_a_model_whose_compute_is_all_inside_control_flow_is_refused(edgekit, work):
    """Silero VAD's default ONNX keeps every Conv and its LSTM in If branches: ORT's static quantizer
    reaches none, and the "INT8" artifact was the fp32 model (exit 0). Refused, exit 2, nothing
    written, saying why and what to export instead."""
    _model(work / "fp32.onnx")
    m = onnx.load(str(work / "fp32.onnx"))
    conv, relu = m.graph.node[0], m.graph.node[1]
    for branch in next(n for n in m.graph.node if n.op_type == "If").attribute:
        branch.g.node.insert(0, relu)
        branch.g.node.insert(0, conv)
    del m.graph.node[:2]
    onnx.save(m, str(work / "inner.onnx"))
    np.savez(work / "x.npz", x=np.random.default_rng(1).normal(size=(16, 4, 16)).astype(np.float32))
    r = edgekit("compress", work / "inner.onnx", "--int8", "--calib", work / "x.npz", "-o", work / "out")
    assert r.returncode == 2, r.stderr
    assert "Conv x2" in r.stderr and "inside If/Loop/Scan subgraphs" in r.stderr
    assert "Traceback" not in r.stderr and not (work / "out").exists()
