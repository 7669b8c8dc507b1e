"""A model ONNX Runtime optimized and saved (FusedConv, FusedGemm, FusedMatMul) is quantized as the
model it came from: those nodes were left fp32, uncounted, by ORT's quantizer."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import torch
from models import depthwise_se, resnet_blocks, smooth_images
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import macs, ort_fused
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _ort_saved(build, tmp_path) -> tuple:
    """BUILD's model exported to ONNX, then optimized by ORT at its extended level and saved as a
    user's file would be; the Conv count of the export, the saved file, and image-like inputs."""
    module, shapes = build()
    plain, fused = tmp_path / "plain.onnx", tmp_path / "ort_saved.onnx"
    torch.onnx.export(
        module,
        torch.zeros(shapes[0]),
        str(plain),
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
        dynamo=False,
    )
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(fused)
    ort.InferenceSession(str(plain), options, providers=["CPUExecutionProvider"])
    convs = sum(n.op_type == "Conv" for n in onnx.load(str(plain)).graph.node)
    return convs, fused, smooth_images(48, tuple(shapes[0][1:]))


def _run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_an_ort_optimized_cnn_is_quantized_whole(tmp_path):
    for build in (resnet_blocks, depthwise_se):
        convs, fused, x = _ort_saved(build, tmp_path)
        ops = Counter(n.op_type for n in onnx.load(str(fused)).graph.node)
        assert ops["FusedConv"] > 0, "ORT fused nothing: the test shows nothing"
        assert ort_fused.unfuse(fused, tmp_path / "unfused.onnx") == ops["FusedConv"] + ops["FusedGemm"]
        unfused = onnx.load(str(tmp_path / "unfused.onnx")).graph
        assert not any(n.domain == "com.microsoft" for n in unfused.node)
        np.testing.assert_allclose(_run(tmp_path / "unfused.onnx", x), _run(fused, x), rtol=1e-4, atol=1e-5)
        summary = quantize_int8(fused, tmp_path / "int8.onnx", Samples({"x": x}, None), Int8Config(), None)
        assert summary["quantized_ops"]["Conv"] == convs, build.__name__
        assert summary["ort_fused_layers_unfused"] == ops["FusedConv"] + ops["FusedGemm"]
        assert not summary["fp32_compute_ops"]


def test_sensitivity_counts_the_macs_of_fused_layers(tmp_path):
    """`edgekit sensitivity` lists an ORT-saved model's layers with their MACs (shape inference
    does not know FusedConv: they had none)."""
    _, fused, _ = _ort_saved(resnet_blocks, tmp_path)
    counts = macs.macs(fused)
    names = [n.name for n in onnx.load(str(fused)).graph.node if n.op_type in ("FusedConv", "Conv")]
    assert names and all(counts.get(n, 0) > 0 for n in names)
    assert sum(counts.values()) == sum(macs.macs(tmp_path / "plain.onnx").values())


def test_fused_matmul_and_gemm_are_written_back_as_what_they_compute(tmp_path):
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(size=(8, 6)).astype(np.float32), "w"),  # transB: (N, K)
        numpy_helper.from_array(rng.normal(size=(8, 4)).astype(np.float32), "g"),
        numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "c"),
    ]
    ms, leaky = "com.microsoft", {"activation": "LeakyRelu", "activation_alpha": 0.2}
    nodes = [
        helper.make_node("FusedMatMul", ["x", "w"], ["m"], "mm", domain=ms, transB=1, alpha=0.5),
        helper.make_node("FusedGemm", ["m", "g", "c"], ["y"], "gemm", domain=ms, **leaky),
        helper.make_node("FusedMatMul", ["x", "x"], ["z"], "xx", domain=ms, transB=1),  # B not constant
    ]
    graph = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 6])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("y", "z")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(ms, 1)])
    onnx.save(model, str(tmp_path / "fused.onnx"))
    assert ort_fused.unfuse(tmp_path / "fused.onnx", tmp_path / "plain.onnx") == 2
    ops = [(n.domain, n.op_type) for n in onnx.load(str(tmp_path / "plain.onnx")).graph.node]
    assert ops == [("", "MatMul"), ("", "Mul"), ("", "Gemm"), ("", "LeakyRelu"), (ms, "FusedMatMul")]
    x = rng.normal(size=(3, 6)).astype(np.float32)
    want = ort.InferenceSession(str(tmp_path / "fused.onnx")).run(None, {"x": x})
    got = ort.InferenceSession(str(tmp_path / "plain.onnx")).run(None, {"x": x})
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
