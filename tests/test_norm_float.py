"""A normalization layer's scale and bias stay float in INT8 (edgekit.compress.quantize._cnn_ops):
ONNX Runtime has no INT8 kernel for InstanceNorm or LayerNorm, yet its quantizer quantizes their
parameters, per tensor (and warns that its per-channel axis does not exist): a scale below half a
level becomes 0."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _style_block(path) -> np.ndarray:
    """x -> Conv -> InstanceNorm (scales from 0.005 to 3) -> Relu -> Conv;
    returns the scales."""
    rng = np.random.default_rng(0)
    gamma = np.geomspace(0.005, 3, 16).astype(np.float32)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(gamma, "gamma"),
        numpy_helper.from_array(rng.normal(0, 0.5, 16).astype(np.float32), "beta"),
        numpy_helper.from_array(np.eye(16, dtype=np.float32).reshape(16, 16, 1, 1), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("InstanceNormalization", ["c", "gamma", "beta"], ["n"], "norm"),
        helper.make_node("Relu", ["n"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], "conv2"),
    ]
    save_onnx(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, 16, 16])],
        inits,
    )
    return gamma


class _Reader(CalibrationDataReader):
    def __init__(self, x):
        self.batches = iter([{"x": x[i : i + 8]} for i in range(0, len(x), 8)])

    def get_next(self):
        return next(self.batches, None)


def test_a_normalizations_scale_and_bias_stay_float_and_its_small_channels_keep_their_signal(tmp_path):
    gamma = _style_block(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).uniform(0, 1, (32, 3, 16, 16)).astype(np.float32)
    cfg = Int8Config(calibration="minmax", adaround=False, range_search=False, equalize_activations=False)
    summary = quantize_int8(
        tmp_path / "fp32.onnx", tmp_path / "int8.onnx", Samples({"x": x}, None), cfg, None
    )
    assert summary["quantized_ops"] == {"Conv": 2}
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    norm = next(n for n in graph.node if n.op_type == "InstanceNormalization")
    np.testing.assert_array_equal(inits[norm.input[1]], gamma)  # read from the initializer itself
    assert norm.input[2] in inits
    # ORT's defaults on the same model and data quantize the scale per tensor: 3 / 127 a level
    quantize_static(
        str(tmp_path / "fp32.onnx"), str(tmp_path / "ort.onnx"), _Reader(x), quant_format=QuantFormat.QDQ,
        per_channel=True,
    )  # fmt: skip
    y = {
        p: ort.InferenceSession(str(tmp_path / f"{p}.onnx"), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )[0]
        for p in ("fp32", "int8", "ort")
    }
    small = slice(0, 4)  # the four smallest scales: ORT's levels make three of them 0
    mine, theirs = (sqnr_db(y["fp32"][:, small], y[p][:, small]) for p in ("int8", "ort"))
    # small: the activation's own levels (a range set by the large channels) drown most of them
    assert mine > theirs + 1, (mine, theirs)
