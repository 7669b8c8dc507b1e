"""Cross-layer equalization and bias correction (edgekit.compress.equalize, .bias_correction) on
small ONNX graphs: CLE balances the channel ranges of conv pairs without changing the fp32
outputs (ReLU6 included); bias correction zeroes the mean output error the weights' rounding makes."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import equalize
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

C = 8


def _save(nodes, inits, path, out_channels, size=12):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_channels, size, size])
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _chain(path, rng):
    """conv -> ReLU -> depthwise conv -> ReLU6 -> conv, BN folded, channel ranges 100x apart."""
    spread = np.geomspace(0.05, 5, C).astype(np.float32)
    inits = {
        "w1": rng.normal(size=(C, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None],
        "b1": rng.normal(size=C).astype(np.float32) * spread,
        "w2": rng.normal(size=(C, 1, 3, 3)).astype(np.float32) * spread[::-1, None, None, None],
        "b2": rng.normal(size=C).astype(np.float32),
        "w3": rng.normal(size=(4, C, 1, 1)).astype(np.float32),
        "b3": np.zeros(4, np.float32),
        "lo": np.array(0, np.float32),
        "hi": np.array(6, np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1] * 4, group=C),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"]),
    ]
    return _save(nodes, inits, path, 4)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _weights(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_equalization_balances_pair_ranges_and_keeps_outputs(tmp_path):
    rng = np.random.default_rng(0)
    src = _chain(tmp_path / "chain.onnx", rng)
    x = rng.normal(size=(16, 3, 12, 12)).astype(np.float32)
    calib = Samples({"x": x}, None)
    summary = equalize.equalize(src, tmp_path / "eq.onnx", calib, None, 8)
    assert summary["equalized_pairs"] == 2
    assert summary["relu6_channels_unscaled"] > 0  # some depthwise channels reach 6 on these inputs

    before, after = _weights(src), _weights(tmp_path / "eq.onnx")
    r1 = np.abs(after["w1"]).reshape(C, -1).max(1)
    r2 = np.abs(after["w2"]).reshape(C, -1).max(1)
    np.testing.assert_allclose(r1, r2, rtol=0.01)  # the ReLU pair: each channel's ranges are equal
    spread = lambda w: w.max() / w.min()  # noqa: E731
    assert spread(r1) < spread(np.abs(before["w1"]).reshape(C, -1).max(1)) / 10
    np.testing.assert_allclose(_run(tmp_path / "eq.onnx", x), _run(src, x), rtol=1e-4, atol=1e-4)


def test_relu6_channels_that_clip_stay_unscaled(tmp_path):
    rng = np.random.default_rng(1)
    src = _chain(tmp_path / "chain.onnx", rng)
    x = rng.normal(size=(16, 3, 12, 12)).astype(np.float32)
    equalize.equalize(src, tmp_path / "eq.onnx", Samples({"x": x}, None), None, 16)
    clipping = _run_tensor(src, x, "c2").max((0, 2, 3)) > 6
    before, after = _weights(src), _weights(tmp_path / "eq.onnx")
    assert clipping.any() and not clipping.all()
    # where ReLU6 clips, the depthwise conv's output channel (weight and bias) is as it was
    np.testing.assert_allclose(after["b2"][clipping], before["b2"][clipping], rtol=1e-6)
    np.testing.assert_allclose(after["w3"][:, clipping], before["w3"][:, clipping], rtol=1e-6)


def _run_tensor(path, x, name):
    m = onnx.load(str(path))
    m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([name], {"x": x})[0]


def _one_conv(path, rng):
    """A conv whose weights round with a bias: each filter has one large tap, the rest small and
    positive, which per-channel INT8 (step 1/127) rounds to zero."""
    w = rng.uniform(0.0005, 0.0035, size=(C, 3, 3, 3)).astype(np.float32)
    w[:, 0, 0, 0] = 1.0
    inits = {"w": w, "b": np.zeros(C, np.float32)}
    return _save([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1] * 4)], inits, path, C)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_bias_correction_zeroes_mean_output_error(tmp_path, bias_correction):
    rng = np.random.default_rng(2)
    src = _one_conv(tmp_path / "conv.onnx", rng)
    x = rng.uniform(0, 1, size=(32, 3, 12, 12)).astype(np.float32)
    # nearest rounding: AdaRound (on by default) removes most of that mean error itself
    cfg = Int8Config(bias_correction=bias_correction, calibration="minmax", adaround=False)
    summary = quantize_int8(src, tmp_path / "q.onnx", Samples({"x": x}, None), cfg, None)
    error = (_run(tmp_path / "q.onnx", x) - _run(src, x)).mean((0, 2, 3))
    if bias_correction:
        assert summary["bias_corrected_layers"] == 1
        assert np.abs(error).max() < 0.002
    else:
        assert "bias_corrected_layers" not in summary
        assert np.abs(error).max() > 0.02  # what correction removes: the rounding's mean shift


def test_flags_turn_each_algorithm_on_and_off(edgekit, tmp_path):
    """`--equalize --no-bias-correction --no-equalize-activations` reach the int8 pass's config and
    its summary says what ran."""
    rng = np.random.default_rng(3)
    src = _chain(tmp_path / "chain.onnx", rng)
    out = tmp_path / "out"
    flags = ("--int8", "--equalize", "--no-bias-correction", "--no-equalize-activations")
    flags = (*flags, "--input-shape", "1,3,12,12")
    r = edgekit("compress", src, *flags, "--calib", "random", "-o", out)
    assert r.returncode == 0, r.stderr
    int8 = json.loads((out / "edgekit.json").read_text())["passes"][-1]
    assert int8["config"]["equalize"] is True and int8["config"]["bias_correction"] is False
    assert int8["config"]["equalize_activations"] is False
    assert int8["summary"]["equalized"]["equalized_pairs"] == 2
    assert "bias_corrected_layers" not in int8["summary"]


def test_algorithm_flag_without_int8_is_refused(edgekit, tmp_path):
    src = _chain(tmp_path / "c.onnx", np.random.default_rng(0))
    r = edgekit("compress", src, "--no-bias-correction", "--fp16", "-o", tmp_path / "out")
    assert r.returncode == 2
    assert "--no-bias-correction changes INT8 quantization; add --int8." in r.stderr
