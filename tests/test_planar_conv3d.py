"""3-D convolutions over one frame computed in 2-D before INT8 (edgekit.compress.planar_conv3d)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import planar_conv3d
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _video(path, depth=1, depth_pads=(0, 0)):
    """x [N, 3, DEPTH, 16, 16] -> Conv3d 1x3x3 (8 channels) -> Tanh -> Conv3d 1x3x3, stride 2 (8)."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (8, 3, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.2, (8, 8, 1, 3, 3)).astype(np.float32)
    pads = [depth_pads[0], 1, 1, depth_pads[1], 1, 1]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[1, 3, 3], pads=pads),
            helper.make_node("Tanh", ["c1"], ["t"]),
            helper.make_node("Conv", ["t", "w2", "b2"], ["y"], pads=[0, 1, 1, 0, 1, 1], strides=[1, 2, 2]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, depth, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
            numpy_helper.from_array(w2, "w2"),
            numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b2"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_one_frame_convolutions_become_2d_and_compute_the_same(tmp_path):
    fp32 = _video(tmp_path / "fp32.onnx")
    assert planar_conv3d.flatten(fp32, tmp_path / "flat.onnx") == 2
    convs = [n for n in onnx.load(str(tmp_path / "flat.onnx")).graph.node if n.op_type == "Conv"]
    weights = {i.name: i for i in onnx.load(str(tmp_path / "flat.onnx")).graph.initializer}
    assert [len(weights[c.input[1]].dims) for c in convs] == [4, 4]
    x = np.random.default_rng(1).uniform(-1, 1, (4, 3, 1, 16, 16)).astype(np.float32)
    want, got = _run(fp32, x), _run(tmp_path / "flat.onnx", x)
    assert got.shape == want.shape == (4, 8, 1, 8, 8)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_int8_runs_the_convolutions_in_2d(tmp_path):
    """The INT8 model keeps the 5-D interface and its convolutions' weights are 4-D."""
    fp32 = _video(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, (32, 3, 1, 16, 16)).astype(np.float32)
    cfg = Int8Config(calibration="minmax", adaround=False, range_search=False)
    summary = quantize_int8(fp32, tmp_path / "int8.onnx", Samples({"x": x}, None), cfg, None)
    assert summary["conv3d_as_2d"] == 2 and summary["quantized_ops"] == {"Conv": 2}
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    weights = {i.name: len(i.dims) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    conv_weights = [producer[n.input[1]].input[0] for n in graph.node if n.op_type == "Conv"]
    assert [weights[w] for w in conv_weights] == [4, 4]
    want, got = _run(fp32, x), _run(tmp_path / "int8.onnx", x)
    assert got.shape == want.shape
    assert np.abs(got - want).mean() < 0.05 * np.abs(want).mean()


def test_convolutions_across_frames_are_left_3d(tmp_path):
    """Depth 4, or a kernel padded along depth (depth 1 -> 3): they convolve across frames."""
    assert planar_conv3d.flatten(_video(tmp_path / "four.onnx", depth=4), tmp_path / "a.onnx") == 0
    padded = _video(tmp_path / "padded.onnx", depth_pads=(1, 1))
    assert planar_conv3d.flatten(padded, tmp_path / "b.onnx") == 0


def test_a_depth_only_onnx_runtime_infers_is_found(tmp_path):
    """x + Expand(0, Shape(x)): ONNX's shape inference cannot tell the sum's depth, ONNX Runtime's
    symbolic one can (RivaGAN's encoder convolves such a tensor)."""
    w = np.random.default_rng(0).normal(0, 0.3, (4, 3, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Expand", ["zero", "s"], ["z"]),
            helper.make_node("Add", ["x", "z"], ["sum"]),
            helper.make_node("Conv", ["sum", "w"], ["y"], kernel_shape=[1, 3, 3], pads=[0, 1, 1, 0, 1, 1]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 1, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(1, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    assert not inferred["sum"].type.tensor_type.shape.dim[2].HasField("dim_value")  # ONNX's: unknown
    onnx.save(model, str(tmp_path / "m.onnx"))
    assert planar_conv3d.flatten(tmp_path / "m.onnx", tmp_path / "flat.onnx") == 1
    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 1, 12, 10)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "flat.onnx", x), _run(tmp_path / "m.onnx", x), atol=1e-5)


def _clip_net(path):
    """x [N, 3, 4, 16, 16] (4 frames) -> Conv3d 3x3x3, 3 -> 16 channels -> Relu -> Conv3d 3x3x3, 16 -> 16."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 6),
            helper.make_node("Relu", ["c1"], ["r"]),
            helper.make_node("Conv", ["r", "w2", "b2"], ["y"], pads=[1] * 6),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [
            numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3, 3)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b1"),
            numpy_helper.from_array(rng.normal(0, 0.1, (16, 16, 3, 3, 3)).astype(np.float32), "w2"),
            numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b2"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_a_video_stem_of_three_channels_stays_fp32(tmp_path):
    """ORT's INT8 3-D convolution of 3 input channels is slower than its fp32 one: left fp32 (ORT's
    form), the wider one after it INT8; TensorRT's form quantizes both."""
    fp32 = _clip_net(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).uniform(-1, 1, (16, 3, 4, 16, 16)).astype(np.float32)
    cfg = dict(calibration="minmax", adaround=False, range_search=False)
    ort_form = quantize_int8(fp32, tmp_path / "a.onnx", Samples({"x": x}, None), Int8Config(**cfg), None)
    assert ort_form["narrow_conv3d_fp32"] == 1
    assert ort_form["quantized_ops"] == {"Conv": 1} and ort_form["fp32_compute_ops"] == {"Conv": 1}
    trt = quantize_int8(fp32, tmp_path / "b.onnx", Samples({"x": x}, None), Int8Config.tensorrt(**cfg), None)
    assert "narrow_conv3d_fp32" not in trt and trt["quantized_ops"] == {"Conv": 2}
