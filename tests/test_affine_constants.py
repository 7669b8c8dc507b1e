"""A constant scale or shift right after a convolution (PP-LCNetV3's learnable affine blocks, as
paddle2onnx writes PP-OCRv5's networks) is folded into the convolution before INT8: the same values,
and the convolution's output rounded once instead of after each of the three ops."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import affine_constants
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

RNG = np.random.default_rng(0)
X = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 10, 10])]
Y = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]


def _model(path, steps: list, readers: int = 1, shared_weight: bool = False) -> None:
    """x [N, 4, 10, 10] -> Conv (8 channels) -> each of STEPS (op, constant, constant first) -> Relu ->
    Conv; READERS > 1: the first Conv's output also goes out as `raw`."""
    inits = [
        numpy_helper.from_array(RNG.normal(0, 0.4, (8, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(RNG.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(RNG.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["t0"], "conv1", pads=[1, 1, 1, 1])]
    for k, (op, value, first) in enumerate(steps):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), f"c{k}"))
        operands = [f"c{k}", f"t{k}"] if first else [f"t{k}", f"c{k}"]
        nodes.append(helper.make_node(op, operands, [f"t{k + 1}"], f"step{k}"))
    nodes += [
        helper.make_node("Relu", [f"t{len(steps)}"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "w1" if shared_weight else "w2"], ["y"], "conv2", pads=[1, 1, 1, 1]),
    ]
    outputs = list(Y)
    if readers > 1:
        nodes.append(helper.make_node("Identity", ["t0"], ["raw"], "raw"))
        outputs.append(helper.make_tensor_value_info("raw", TensorProto.FLOAT, None))
    if shared_weight:  # conv2 reads w1 (4 input channels): make r 4 channels wide
        inits[0] = numpy_helper.from_array(RNG.normal(0, 0.4, (4, 4, 3, 3)).astype(np.float32), "w1")
        inits[1] = numpy_helper.from_array(RNG.normal(0, 0.1, 4).astype(np.float32), "b1")
    save_onnx(path, nodes, X, outputs, inits)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


LAB = [("Mul", [1.7], True), ("Add", [-0.3], False)]  # x * s + b, PP-LCNetV3's block, s written first


def test_a_learnable_affine_block_is_folded_and_computes_the_same(tmp_path):
    per_channel = np.linspace(0.5, 2, 8).reshape(8, 1, 1)
    steps = [*LAB, ("Div", per_channel, False), ("Sub", per_channel.reshape(1, 8, 1, 1), False)]
    _model(tmp_path / "m.onnx", steps)
    assert affine_constants.fold(tmp_path / "m.onnx", tmp_path / "f.onnx") == 4
    graph = onnx.load(str(tmp_path / "f.onnx")).graph
    assert [n.op_type for n in graph.node] == ["Conv", "Relu", "Conv"]
    assert not {"w1", "b1", "c0", "c1", "c2", "c3"} & {i.name for i in graph.initializer}
    x = RNG.normal(0, 1, (6, 4, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "f.onnx", x)[0], _run(tmp_path / "m.onnx", x)[0], atol=1e-5)


def test_what_is_no_affine_of_the_convolution_alone_stays(tmp_path):
    cases = {
        "a constant minus the output": ([("Sub", [1.0], True)], {}),
        "a constant of higher rank (it broadcasts the output up)": (
            [("Mul", np.ones((1, 1, 1, 1, 1)), True)],
            {},
        ),
        "a constant per row, not per channel": ([("Mul", np.ones((1, 1, 10, 1)), False)], {}),
        "the output read by another node too": (LAB, {"readers": 2}),
        "a weight another layer reads": (LAB, {"shared_weight": True}),
    }
    for what, (steps, kw) in cases.items():
        _model(tmp_path / "m.onnx", steps, **kw)
        assert affine_constants.fold(tmp_path / "m.onnx", tmp_path / "f.onnx") == 0, what


def test_the_int8_convolution_rounds_its_output_once(tmp_path):
    _model(tmp_path / "m.onnx", LAB)
    calib = Samples({"x": RNG.normal(0, 1, (64, 4, 10, 10)).astype(np.float32)}, None)
    config = Int8Config(adaround=False, range_search=False)
    summary = quantize_int8(tmp_path / "m.onnx", tmp_path / "int8.onnx", calib, config, None)
    assert summary["conv_affine_folded"] == 2 and summary["quantized_ops"] == {"Conv": 2}
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    assert not [n for n in graph.node if n.op_type in ("Mul", "Add")]  # no QLinearMul/QLinearAdd to round


def _after_activation(path, kernel: int, group: int, steps: list) -> None:
    """x [N, 4, 10, 10] -> Relu -> each of STEPS (op, constant) -> Conv (KERNEL, padded to keep the
    size, GROUP groups, 8 channels) -> y."""
    inits = [
        numpy_helper.from_array(RNG.normal(0, 0.4, (8, 4 // group, kernel, kernel)).astype(np.float32), "w")
    ]
    nodes = [helper.make_node("Relu", ["x"], ["t0"], "relu")]
    for k, (op, value) in enumerate(steps):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), f"c{k}"))
        nodes.append(helper.make_node(op, [f"t{k}", f"c{k}"], [f"t{k + 1}"], f"step{k}"))
    pad = kernel // 2
    nodes.append(
        helper.make_node("Conv", [f"t{len(steps)}", "w"], ["y"], "conv", pads=[pad] * 4, group=group)
    )
    save_onnx(path, nodes, X, Y, inits)


def test_an_affine_block_before_a_convolution_folds_into_its_input_channels(tmp_path):
    scale = np.array([0.5, 1.5, -2.0, 3.0], np.float32).reshape(1, 4, 1, 1)
    lab = [("Mul", scale), ("Add", [0.25])]
    x = RNG.normal(0, 1, (6, 4, 10, 10)).astype(np.float32)
    # (kernel, group): what stays of x * s + b in front of the convolution
    cases = {
        (1, 1): [],  # no padding: the shift goes into the bias too
        (1, 2): [],
        (3, 1): ["Add"],  # padded: x + b / s stays, s goes into the weights
        (3, 4): ["Add"],  # depthwise-style groups, one scale per input channel
    }
    for (kernel, group), left in cases.items():
        _after_activation(tmp_path / "m.onnx", kernel, group, lab)
        folded = affine_constants.fold(tmp_path / "m.onnx", tmp_path / "f.onnx")
        assert folded == 2 - len(left), (kernel, group)
        graph = onnx.load(str(tmp_path / "f.onnx")).graph
        assert [n.op_type for n in graph.node] == ["Relu", *left, "Conv"], (kernel, group)
        ref, out = _run(tmp_path / "m.onnx", x)[0], _run(tmp_path / "f.onnx", x)[0]
        np.testing.assert_allclose(out, ref, atol=1e-5, err_msg=str((kernel, group)))


def test_a_shift_alone_before_a_padded_convolution_stays(tmp_path):
    _after_activation(tmp_path / "m.onnx", 3, 1, [("Add", [0.25])])
    assert affine_constants.fold(tmp_path / "m.onnx", tmp_path / "f.onnx") == 0  # its border is not shifted


def test_a_batch_norm_after_a_transposed_convolution_folds(tmp_path):
    # a DBNet head upsamples with ConvTranspose, its bias as an Add, then BatchNormalization: ORT's
    # optimizer fuses BatchNormalization into a Conv only
    c = 6
    bn = [RNG.uniform(0.5, 2, c), RNG.normal(0, 1, c), RNG.normal(0, 1, c), RNG.uniform(0.1, 2, c)]
    inits = [
        numpy_helper.from_array(RNG.normal(0, 0.3, (4, c, 2, 2)).astype(np.float32), "w"),
        numpy_helper.from_array(RNG.normal(0, 1, (c, 1, 1)).astype(np.float32), "bias"),
        *(numpy_helper.from_array(v.astype(np.float32), n) for v, n in zip(bn, "sbmv", strict=True)),
    ]
    nodes = [
        helper.make_node("ConvTranspose", ["x", "w"], ["t"], "up", strides=[2, 2]),
        helper.make_node("Add", ["t", "bias"], ["u"], "bias_add"),
        helper.make_node("BatchNormalization", ["u", "s", "b", "m", "v"], ["n"], "bn", epsilon=1e-5),
        helper.make_node("Relu", ["n"], ["y"], "relu"),
    ]
    save_onnx(tmp_path / "m.onnx", nodes, X, Y, inits)
    assert affine_constants.fold(tmp_path / "m.onnx", tmp_path / "f.onnx") == 2
    assert [n.op_type for n in onnx.load(str(tmp_path / "f.onnx")).graph.node] == ["ConvTranspose", "Relu"]
    x = RNG.normal(0, 1, (3, 4, 10, 10)).astype(np.float32)
    np.testing.assert_allclose(_run(tmp_path / "f.onnx", x)[0], _run(tmp_path / "m.onnx", x)[0], atol=1e-4)
