"""Activation equalization (edgekit.compress.equalize_activations): the channels of the tensor
between a conv and a depthwise conv reach one range, the fp32 outputs stay the same on the
calibration data, and the INT8 model gets closer to fp32 for it."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress.equalize_activations import MARGIN, equalize_activations
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

C = 16


def _block(path, rng, activation="Clip"):
    """conv -> ReLU6 (or ACTIVATION: Relu, None) -> depthwise conv -> ReLU -> 1x1 conv, the first
    conv's channels 300x apart in range (the largest reach ReLU6's bound), the depthwise conv's the
    other way round: every channel matters as much to the output, as in a trained network."""
    spread = np.geomspace(0.01, 3, C).astype(np.float32)
    inits = {
        "w1": rng.normal(size=(C, 3, 3, 3)).astype(np.float32) * spread[:, None, None, None],
        "b1": rng.normal(size=C).astype(np.float32) * spread,
        "w2": rng.normal(size=(C, 1, 3, 3)).astype(np.float32) / spread[:, None, None, None],
        "b2": rng.normal(size=C).astype(np.float32) * 0.1,
        "w3": rng.normal(size=(4, C, 1, 1)).astype(np.float32),
        "b3": np.zeros(4, np.float32),
        "lo": np.array(0, np.float32),
        "hi": np.array(6, np.float32),
    }
    act = {
        "Clip": [helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"])],
        "Relu": [helper.make_node("Relu", ["c1"], ["a1"])],
        None: [helper.make_node("Identity", ["c1"], ["a1"])],
    }[activation]
    if activation is None:  # no activation: the depthwise conv reads the conv's output
        act, read = [], "c1"
    else:
        read = "a1"
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
        *act,
        helper.make_node("Conv", [read, "w2", "b2"], ["c2"], pads=[1] * 4, group=C),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 12, 12])
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(v, k) for k, v in inits.items()])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, read


def _run(path, x, name="y"):
    m = onnx.load(str(path))
    if name != "y":
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run([name], {"x": x})[0]


def _weights(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_relu6_channels_reach_one_range_and_outputs_stay(tmp_path):
    rng = np.random.default_rng(0)
    src, read = _block(tmp_path / "b.onnx", rng)
    x = rng.normal(size=(32, 3, 12, 12)).astype(np.float32)
    out = tmp_path / "eq.onnx"
    summary = equalize_activations(src, out, Samples({"x": x}, None), None, 8, 2**30)
    before, after = _run(src, x, read).max((0, 2, 3)), _run(out, x, read).max((0, 2, 3))
    low = before < MARGIN * 6
    assert (before >= 6).any() and low.any()
    assert summary == {"pairs": 1, "channels": int(low.sum()), "largest_gain": summary["largest_gain"]}
    assert summary["largest_gain"] > 20
    # every channel below MARGIN of the bound now reaches it; the others (ReLU6 clips some) are as they were
    np.testing.assert_allclose(after[low], MARGIN * 6, rtol=1e-5)
    w0, w1 = _weights(src), _weights(out)
    np.testing.assert_array_equal(w1["w1"][~low], w0["w1"][~low])
    np.testing.assert_array_equal(w1["w3"], w0["w3"])  # the dense conv after is not touched
    np.testing.assert_allclose(_run(out, x), _run(src, x), rtol=1e-4, atol=1e-4)


def test_without_activation_the_model_is_unchanged_everywhere(tmp_path):
    rng = np.random.default_rng(1)
    src, read = _block(tmp_path / "b.onnx", rng, activation=None)
    x = rng.normal(size=(16, 3, 12, 12)).astype(np.float32)
    out = tmp_path / "eq.onnx"
    equalize_activations(src, out, Samples({"x": x}, None), None, 16, 2**30)
    top = np.abs(_run(out, x, read)).max((0, 2, 3))
    np.testing.assert_allclose(top, top.max(), rtol=1e-5)  # two-sided: |x| equalized
    held_out = 3 * rng.normal(size=(8, 3, 12, 12)).astype(np.float32)  # beyond what calibration saw
    np.testing.assert_allclose(_run(out, held_out), _run(src, held_out), rtol=1e-4, atol=1e-3)


def test_int8_gets_closer_to_fp32(tmp_path):
    """The effect it is for: the small channels get levels, so INT8's error on held-out inputs falls."""
    rng = np.random.default_rng(2)
    src, _ = _block(tmp_path / "b.onnx", rng, activation="Relu")
    calib = Samples({"x": rng.normal(size=(64, 3, 12, 12)).astype(np.float32)}, None)
    x = rng.normal(size=(32, 3, 12, 12)).astype(np.float32)
    ref = _run(src, x)
    sqnr, summaries = {}, {}
    for on in (False, True):
        cfg = Int8Config(calibration="minmax", adaround=False, equalize_activations=on)  # this CPU's form
        summaries[on] = quantize_int8(src, tmp_path / f"q{on}.onnx", calib, cfg, None)
        err = _run(tmp_path / f"q{on}.onnx", x) - ref
        sqnr[on] = 10 * np.log10((ref**2).sum() / (err**2).sum())
    assert summaries[True]["equalized_activations"]["pairs"] == 1
    assert "equalized_activations" not in summaries[False]
    assert sqnr[True] > sqnr[False] + 10, sqnr  # 8 -> 33 dB when measured


def test_per_tensor_weights_are_left_alone(tmp_path):
    rng = np.random.default_rng(3)
    src, _ = _block(tmp_path / "b.onnx", rng)
    calib = Samples({"x": rng.normal(size=(16, 3, 12, 12)).astype(np.float32)}, None)
    cfg = Int8Config(calibration="minmax", per_channel=False, adaround=False)
    assert "equalized_activations" not in quantize_int8(src, tmp_path / "q.onnx", calib, cfg, None)


def test_a_small_memory_budget_measures_the_same_maxima(tmp_path, monkeypatch):
    """Under a budget that fits one sample's tensors, the maxima come from runs of one sample and
    are the same."""
    from edgekit.compress import tensors

    rng = np.random.default_rng(4)
    src, _ = _block(tmp_path / "b.onnx", rng)
    calib = Samples({"x": rng.normal(size=(12, 3, 12, 12)).astype(np.float32)}, None)
    sizes = []
    real = tensors.values

    def counted(*args, **kwargs):
        for found, n in real(*args, **kwargs):
            sizes.append(n)
            yield found, n

    monkeypatch.setattr(tensors, "values", counted)
    equalize_activations(src, tmp_path / "small.onnx", calib, None, 8, 1)
    assert sizes == [1] * 12
    sizes.clear()
    equalize_activations(src, tmp_path / "large.onnx", calib, None, 8, 2**30)
    assert sizes == [1, 8, 3]
    small, large = _weights(tmp_path / "small.onnx"), _weights(tmp_path / "large.onnx")
    assert all(np.array_equal(small[k], large[k]) for k in large)
