"""Initializers ONNX Runtime's pre-processing created are renamed (edgekit.compress.generated_names):
its MatMul + Add fusion names Reshape shapes `gemm_input_shape_token_N` and, fusing again when the
INT8 model is loaded, counted N from 0 and failed on the existing name."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgekit.compress import generated_names


def _linears(path) -> None:
    """Two Linear layers written as MatMul + Add on a [1, 8, 16] input: ORT fuses each into a Gemm
    between Reshapes, whose shapes it names."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 16)).astype(np.float32), f"w{i}") for i in (0, 1)
    ]
    inits += [numpy_helper.from_array(rng.normal(0, 0.3, 16).astype(np.float32), f"b{i}") for i in (0, 1)]
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["m0"]),
        helper.make_node("Add", ["m0", "b0"], ["a0"]),
        helper.make_node("Relu", ["a0"], ["r"]),
        helper.make_node("MatMul", ["r", "w1"], ["m1"]),
        helper.make_node("Add", ["m1", "b1"], ["y"]),
    ]
    save_onnx(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16])],
        inits,
    )


def test_the_names_preprocessing_created_get_a_prefix_and_the_model_computes_the_same(tmp_path):
    _linears(tmp_path / "fp32.onnx")
    quant_pre_process(str(tmp_path / "fp32.onnx"), str(tmp_path / "pre.onnx"))
    original = {"w0", "w1", "b0", "b1"}
    made = {i.name for i in onnx.load(str(tmp_path / "pre.onnx")).graph.initializer} - original
    assert any(n.startswith("gemm_input_shape") for n in made), "ORT fused nothing: the test shows nothing"
    x = np.random.default_rng(1).standard_normal((1, 8, 16)).astype(np.float32)
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    before = run(tmp_path / "pre.onnx")
    assert generated_names.rename_created(tmp_path / "fp32.onnx", tmp_path / "pre.onnx") == len(made)
    names = {i.name for i in onnx.load(str(tmp_path / "pre.onnx")).graph.initializer}
    assert names == original | {generated_names.PREFIX + n for n in made}
    np.testing.assert_array_equal(run(tmp_path / "pre.onnx"), before)
    assert generated_names.rename_created(tmp_path / "pre.onnx", tmp_path / "pre.onnx") == 0
