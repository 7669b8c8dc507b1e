"""A layer the INT8 model leaves fp32 (--max-accuracy-drop's kept layers, exclude_nodes) stays fp32
in ONNX Runtime: ORT's WeightBiasQuantization would otherwise give its weights per-tensor INT8 at
session creation (edgekit.compress.float_layers)."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import torch
from models import smooth_images
from torch import nn

from edgekit.artifact import InputSpec, TensorSpec
from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples
from edgekit.export.onnx import ExportConfig, export


class Branches(nn.Module):
    """conv0 -> ReLU, read by two branches: conv1 (its output channels 1000x apart in scale, what
    per-tensor INT8 weights lose) -> ReLU -> conv2, and conv3; their sum."""

    def __init__(self):
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.conv2, self.conv3 = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 1)
        gains = torch.logspace(-3, 0, 8)
        with torch.no_grad():
            self.conv1.weight.mul_(gains.view(-1, 1, 1, 1))
            self.conv1.bias.mul_(gains)
            self.conv2.weight.div_(gains.view(1, -1, 1, 1))

    def forward(self, x):
        y = torch.relu(self.conv0(x))
        return self.conv2(torch.relu(self.conv1(y))) + self.conv3(y)


def _run(path, x, level):
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_layer_left_fp32_runs_fp32_in_ort(tmp_path):
    torch.manual_seed(0)
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", 3, 16, 16])])
    (tmp_path / "fp32").mkdir()
    fp32 = export(Branches().eval(), spec, tmp_path / "fp32", ExportConfig(), 1)
    graph = onnx.load(str(fp32)).graph
    conv1 = next(n.name for n in graph.node if n.op_type == "Conv" and any("conv1" in i for i in n.input))
    calib = Samples({"x": smooth_images(32, (3, 16, 16), seed=1)}, None)
    cfg = Int8Config(target_cpu="x86-vnni", adaround=False, range_search=False, exclude_nodes=[conv1])
    summary = quantize_int8(fp32, tmp_path / "q.onnx", calib, cfg, None)
    assert summary["fp32_layers_pinned"] == 1 and summary["fp32_compute_ops"] == {"Conv": 1}
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
