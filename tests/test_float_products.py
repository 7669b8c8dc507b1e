"""A MatMul or Gemm that only the float output tail reads keeps a float output: ORT runs it with one
INT8 kernel either way, and the Q/DQ pair ORT's quantizer writes only rounds (torchcrepe's pitch
logits, rounded to 8 bits before their Sigmoid, tied neighbouring bins)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import output_tail
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

RNG = np.random.default_rng(0)
BINS = 360


def _model(path, head: str, tail: str | None) -> None:
    """x [N, 16] (a mixture of 16 pitches) -> HEAD (Gemm, or a 1x1 Conv on [N, 16, 1, 1]) -> 360
    logits shaped as a smooth bump around the mixture's pitch, range [-8, 8] -> TAIL or the output."""
    centres = np.arange(16)[:, None] * 22.5 + 11
    w = (16 * np.exp(-(((np.arange(BINS)[None] - centres) / 12) ** 2)) - 8).astype(np.float32)
    inits = [numpy_helper.from_array(np.zeros(BINS, np.float32), "b")]
    if head == "Gemm":
        inits.append(numpy_helper.from_array(w, "w"))
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits" if tail else "y"], "head")]
        shape = ["N", 16]
    else:
        inits.append(numpy_helper.from_array(w.T.reshape(BINS, 16, 1, 1).copy(), "w"))
        nodes = [helper.make_node("Conv", ["x", "w", "b"], ["logits" if tail else "y"], "head")]
        shape = ["N", 16, 1, 1]
    if tail:
        nodes.append(helper.make_node(tail, ["logits"], ["y"], "tail"))
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)]
    save_onnx(path, nodes, x, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def _mixtures(n: int, conv: bool = False) -> np.ndarray:
    x = RNG.dirichlet(np.full(16, 0.3), n).astype(np.float32)
    return x.reshape(n, 16, 1, 1) if conv else x


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _quantize(tmp_path, head: str, tail: str | None) -> tuple[dict, onnx.GraphProto]:
    _model(tmp_path / "m.onnx", head, tail)
    calib = Samples({"x": _mixtures(128, head == "Conv")}, None)
    config = Int8Config(adaround=False, range_search=False)
    summary = quantize_int8(tmp_path / "m.onnx", tmp_path / "int8.onnx", calib, config, None)
    return summary, onnx.load(str(tmp_path / "int8.onnx")).graph


def test_a_product_into_a_float_sigmoid_keeps_its_float_output_and_its_argmax(tmp_path):
    summary, graph = _quantize(tmp_path, "Gemm", "Sigmoid")
    assert summary["float_product_outputs"] == 1 and summary["quantized_ops"] == {"Gemm": 1}
    head = next(n for n in graph.node if n.op_type == "Gemm")
    assert [n.op_type for n in graph.node if head.output[0] in n.input] == ["Sigmoid"]
    assert not {"logits_scale", "logits_zero_point"} & {i.name for i in graph.initializer}
    x = _mixtures(400)
    ref, out = _run(tmp_path / "m.onnx", x), _run(tmp_path / "int8.onnx", x)
    # 8-bit logits (step 16/255) tie the bump's top bins and the first is taken: 70 % agreed
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.9


def test_a_product_that_is_the_output_writes_the_outputs_name_itself(tmp_path):
    summary, graph = _quantize(tmp_path, "Gemm", None)
    assert summary["float_product_outputs"] == 1
    assert [n.op_type for n in graph.node if "y" in n.output] == ["Gemm"]
    assert [o.name for o in graph.output] == ["y"]
    x = _mixtures(400)
    ref, out = _run(tmp_path / "m.onnx", x), _run(tmp_path / "int8.onnx", x)
    assert np.mean(out.argmax(1) == ref.argmax(1)) >= 0.9


def test_a_convolution_keeps_its_pair(tmp_path):
    # ORT has no INT8 Conv with a float output: without the pair it would run as an fp32 Conv
    summary, graph = _quantize(tmp_path, "Conv", "Sigmoid")
    assert "float_product_outputs" not in summary
    head = next(n for n in graph.node if n.op_type == "Conv")
    assert [n.op_type for n in graph.node if head.output[0] in n.input] == ["QuantizeLinear"]


def test_a_product_another_product_reads_keeps_its_pair(tmp_path):
    _model(tmp_path / "m.onnx", "Gemm", "Sigmoid")
    model = onnx.load(str(tmp_path / "m.onnx"))
    w2 = numpy_helper.from_array(RNG.normal(0, 0.1, (BINS, 8)).astype(np.float32), "w2")
    model.graph.initializer.append(w2)
    model.graph.node.append(helper.make_node("MatMul", ["logits", "w2"], ["z"], "second"))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    onnx.save(model, str(tmp_path / "m.onnx"))
    calib = Samples({"x": _mixtures(64)}, None)
    config = Int8Config(adaround=False, range_search=False)
    quantize_int8(tmp_path / "m.onnx", tmp_path / "int8.onnx", calib, config, None)
    assert output_tail.float_products(tmp_path / "int8.onnx") == 0  # "second" reads it quantized
