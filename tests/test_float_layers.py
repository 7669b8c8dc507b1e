"""A layer the INT8 model leaves fp32 (--max-accuracy-drop's kept layers, exclude_nodes) stays fp32
in ONNX Runtime: ORT's WeightBiasQuantization would otherwise give its weights per-tensor INT8 at
session creation (edgekit.compress.float_layers)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from models import smooth_images
from onnx import helper, numpy_helper
from torch import nn

from edgekit.artifact import InputSpec, TensorSpec
from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress import float_layers
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples
from edgekit.export.onnx import ExportConfig, export


class Branches(nn.Module):
    """conv0 (-> ReLU), read by two branches: conv1 (its output channels 1000x apart in scale, what
    per-tensor INT8 weights lose) -> ReLU -> conv2, and conv3; their sum."""

    def __init__(self, relu: bool):
        super().__init__()
        self.relu = relu
        self.conv0, self.conv1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.conv2, self.conv3 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        gains = torch.logspace(-3, 0, 8)
        with torch.no_grad():
            self.conv1.weight.mul_(gains.view(-1, 1, 1, 1))
            self.conv1.bias.mul_(gains)
            self.conv2.weight.div_(gains.view(1, -1, 1, 1))

    def forward(self, x):
        y = torch.relu(self.conv0(x)) if self.relu else self.conv0(x)
        return self.conv2(torch.relu(self.conv1(y))) + self.conv3(y)


def _run(path, x, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("relu", [False, True])
def test_a_layer_left_fp32_runs_fp32_in_ort(tmp_path, relu):
    """Its input is the float tensor (with the ReLU the quantizer folded into the shared Q, a copy of
    the ReLU on it), and ORT's optimized graph computes what the Q/DQ graph says, weights in fp32."""
    torch.manual_seed(0)
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", 3, 16, 16])])
    (tmp_path / "fp32").mkdir()
    fp32 = export(Branches(relu).eval(), spec, tmp_path / "fp32", ExportConfig(), 1)
    graph = onnx.load(str(fp32)).graph
    conv1 = next(n.name for n in graph.node if n.op_type == "Conv" and any("conv1" in i for i in n.input))
    calib = Samples({"x": smooth_images(32, (3, 16, 16), seed=1)}, None)
    # the form for this CPU (no target_cpu): one that saturates here would part fused from literal
    cfg = Int8Config(adaround=False, range_search=False, exclude_nodes=[conv1])
    summary = quantize_int8(fp32, tmp_path / "q.onnx", calib, cfg, None)
    assert summary["fp32_layer_inputs"] == {"activation_copied" if relu else "float_input": 1}
    assert summary["fp32_compute_ops"] == {"Conv": 1}
    q = onnx.load(str(tmp_path / "q.onnx")).graph
    producer = {o: n.op_type for n in q.node for o in n.output}
    assert producer[next(n for n in q.node if n.name == conv1).input[0]] == ("Relu" if relu else "Conv")
    x = smooth_images(16, (3, 16, 16), seed=2)
    # ORT's optimized graph computes what the Q/DQ graph says, the excluded layer's weights in fp32
    literal = _run(tmp_path / "q.onnx", x, ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    fused = _run(tmp_path / "q.onnx", x, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    assert sqnr_db(literal, fused) > 60  # 28 dB with the weights ORT quantized per tensor
    so = ort.SessionOptions()  # the basic level: ORT's quantizing rewrite runs, the layer keeps its name
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(tmp_path / "q.onnx"), so, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph
    floats = {i.name for i in optimized.initializer if i.data_type == onnx.TensorProto.FLOAT}
    layer = next(n for n in optimized.node if n.name == conv1)
    assert layer.input[1] in floats


def test_a_layer_whose_input_has_no_float_tensor_gets_its_own_per_channel_dequantize(tmp_path):
    """An INT8 graph input (no float tensor before its DequantizeLinear): the layer reads a
    per-channel DequantizeLinear of the same values, and ORT leaves its weights fp32."""
    rng = np.random.default_rng(0)
    gains = np.logspace(-3, 0, 4).reshape(-1, 1, 1, 1)
    weight = (rng.standard_normal((4, 3, 1, 1)) * gains).astype(np.float32)
    inits = [
        numpy_helper.from_array(weight, "w"),
        numpy_helper.from_array(np.float32(0.02), "s"),
        numpy_helper.from_array(np.uint8(128), "z"),
        numpy_helper.from_array(np.float32(0.01), "s_out"),
        numpy_helper.from_array(np.uint8(128), "z_out"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["x", "s", "z"], ["xf"]),
        helper.make_node("Conv", ["xf", "w"], ["y"], name="kept"),
        helper.make_node("QuantizeLinear", ["y", "s_out", "z_out"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s_out", "z_out"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.UINT8, [2, 3, 8, 8])],
        [helper.make_tensor_value_info("out", onnx.TensorProto.FLOAT, None)],
        inits,
    )
    path = tmp_path / "q.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert float_layers.restore(path, path) == {"per_channel_input": 1}
    x = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    runs = []
    for level in (ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        runs.append(session.run(None, {"x": x})[0])
    np.testing.assert_array_equal(*runs)
