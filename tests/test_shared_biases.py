"""A bias two convolutions share (torch's dynamo exporter shares equal constants) is copied per
reader under a name no tensor has, before ONNX Runtime's quantizer copies it as `<name><n>`, which
here is the first convolution's output, and writes a model ORT cannot load."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import shared_biases
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _model(path) -> None:
    """x -> Conv(w1, b) -> Sigmoid named "b1" -> Add(b0) -> Conv(w2, b) -> y: both convolutions
    read bias b, and ORT names its copy after the largest number ending an initializer's name
    that starts with b (b0): b1."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.full(8, 0.1, np.float32), "b"),
        numpy_helper.from_array(np.full((8, 1, 1), 0.2, np.float32), "b0"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b"], ["c"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["b1"], "sigmoid"),
        helper.make_node("Add", ["b1", "b0"], ["s"], "add"),
        helper.make_node("Conv", ["s", "w2", "b"], ["y"], "conv2", pads=[1, 1, 1, 1]),
    ]
    _save(path, nodes, inits, [8, 16, 16])


def _save(path, nodes, inits, y_shape) -> None:
    """NODES from input x [N, 3, 16, 16] to output y [N, *Y_SHAPE], opset 17."""
    save_onnx(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *y_shape])],
        inits,
    )


def _int8(tmp_path) -> tuple[dict, float]:
    """tmp_path/fp32.onnx quantized to int8.onnx: the summary, and the SQNR (dB) of its output."""
    x = np.random.default_rng(1).uniform(0, 1, (16, 3, 16, 16)).astype(np.float32)
    summary = quantize_int8(
        tmp_path / "fp32.onnx", tmp_path / "int8.onnx", Samples({"x": x}, None), Int8Config(), None
    )
    a, b = (
        ort.InferenceSession(str(tmp_path / p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        for p in ("fp32.onnx", "int8.onnx")
    )
    return summary, 10 * np.log10((a**2).mean() / ((a - b) ** 2).mean())


def test_each_reader_gets_its_own_uniquely_named_copy(tmp_path):
    _model(tmp_path / "fp32.onnx")
    assert shared_biases.unshare(tmp_path / "fp32.onnx", tmp_path / "unshared.onnx") == 1
    graph = onnx.load(str(tmp_path / "unshared.onnx")).graph
    biases = [n.input[2] for n in graph.node if n.op_type == "Conv"]
    assert biases[0] == "b" and biases[1] not in {"b", "b0", "b1", "c", "s", "y", "x", "w1", "w2"}
    assert shared_biases.unshare(tmp_path / "unshared.onnx", tmp_path / "again.onnx") == 0


def test_int8_of_a_model_with_a_shared_bias_loads_and_stays_close(tmp_path):
    _model(tmp_path / "fp32.onnx")
    summary, sqnr = _int8(tmp_path)
    assert summary["shared_biases_copied"] == 1 and summary["quantized_ops"] == {"Conv": 2}
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    outputs = [o for n in graph.node for o in n.output]
    assert len(outputs) == len(set(outputs))  # ORT's copy b1 was also the Sigmoid's
    assert sqnr > 25


def test_a_bias_also_read_as_a_tensor_is_an_int32_bias_of_its_own(tmp_path):
    """x -> Conv(w, b) -> Transpose -> Add(b, .) -> y, as the legacy exporter shares an equal
    (zero) bias between a convolution and a Linear it wrote as MatMul + Add (a ConvNeXt): the
    convolution gets its own copy, so ORT quantizes it as an int32 bias, not as the uint8
    activation the Add reads (and the range search then wrote int32 levels into it)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(0, 0.5, 8).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["t"], "nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Add", ["b", "t"], ["y"], "add"),
    ]
    _save(tmp_path / "fp32.onnx", nodes, inits, [16, 16, 8])
    summary, sqnr = _int8(tmp_path)
    assert summary["shared_biases_copied"] == 1
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    producer = {o: n for n in graph.node for o in n.output}
    types = {i.name: i.data_type for i in graph.initializer}
    conv = next(n for n in graph.node if n.op_type == "Conv")
    assert types[producer[conv.input[2]].input[0]] == TensorProto.INT32
    assert sqnr > 25


def test_a_gemms_row_bias_is_made_the_vector_it_is(tmp_path):
    """A Dense layer as jax2tf/tf2onnx writes it (MatMul + Add of a [1, N] row, which ORT's
    optimizer fuses into a Gemm with that row as its bias): ORT's per-channel quantizer indexed the
    row per output channel and stopped ("The truth value of an array ... is ambiguous", Google's
    Magika). The row becomes a vector, a copy where an Add reads it too; the Gemm computes the same."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 5)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.3, (1, 5)).astype(np.float32), "row"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], "conv", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], "pool"),
        helper.make_node("Flatten", ["p"], ["f"], "flatten"),
        helper.make_node("Gemm", ["f", "w2", "row"], ["g"], "dense"),
        helper.make_node("Add", ["g", "row"], ["y"], "shift"),
    ]
    _save(tmp_path / "fp32.onnx", nodes, inits, [5])
    assert shared_biases.vector_biases(tmp_path / "fp32.onnx", tmp_path / "vectors.onnx") == 1
    model = onnx.load(str(tmp_path / "vectors.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    gemm, add = model.graph.node[3], model.graph.node[4]
    assert inits[gemm.input[2]].shape == (5,) and inits[add.input[1]].shape == (1, 5)
    np.testing.assert_array_equal(inits[gemm.input[2]], inits["row"][0])
    summary, sqnr = _int8(tmp_path)
    assert summary["gemm_biases_made_vectors"] == 1 and summary["quantized_ops"]["Gemm"] == 1
    assert sqnr > 25
