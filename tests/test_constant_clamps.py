"""A clamp written as Max or Min against a constant (TensorFlow's tf.math.maximum after each LeakyReLU
of the speech embedding openWakeWord runs) becomes a Clip, which ORT's quantizer folds into the
QuantizeLinear's range: the INT8 chain runs through it instead of stopping for a float Max."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import constant_clamps
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

RNG = np.random.default_rng(0)


def _model(path, clamps: list) -> None:
    """x [N, 4, 12, 12] -> Conv -> LeakyRelu -> each of CLAMPS (op, constant) in turn -> Conv."""
    inits = [
        numpy_helper.from_array(RNG.normal(0, 0.4, (8, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(RNG.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("LeakyRelu", ["c1"], ["a0"], "leaky", alpha=0.2),
    ]
    for k, (op, value) in enumerate(clamps):
        operand = value if isinstance(value, str) else f"bound{k}"
        if not isinstance(value, str):
            inits.append(numpy_helper.from_array(np.asarray(value, np.float32), operand))
        nodes.append(helper.make_node(op, [f"a{k}", operand], [f"a{k + 1}"], f"clamp{k}"))
    nodes.append(helper.make_node("Conv", [f"a{len(clamps)}", "w2"], ["y"], "conv2", pads=[1, 1, 1, 1]))
    x = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 12, 12])]
    save_onnx(path, nodes, x, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_max_and_min_against_one_value_become_clips_computing_the_same(tmp_path):
    _model(tmp_path / "m.onnx", [("Max", np.full((1, 1, 1, 1), -0.4)), ("Min", 1.5)])
    assert constant_clamps.as_clip(tmp_path / "m.onnx", tmp_path / "c.onnx") == 2
    graph = onnx.load(str(tmp_path / "c.onnx")).graph
    clips = [n for n in graph.node if n.op_type == "Clip"]
    assert [len(n.input) for n in clips] == [2, 3] and clips[1].input[1] == ""  # min only, then max only
    assert not {"bound0", "bound1"} & {i.name for i in graph.initializer}  # no unread tensor left behind
    x = RNG.normal(0, 2, (5, 4, 12, 12)).astype(np.float32)
    np.testing.assert_array_equal(_run(tmp_path / "c.onnx", x), _run(tmp_path / "m.onnx", x))


def test_what_is_no_clamp_by_one_value_stays(tmp_path):
    cases = {
        "per-channel bounds": [("Max", np.full((1, 8, 1, 1), -0.4))],
        "a bound of higher rank (it broadcasts the tensor up)": [("Max", np.full((1, 1, 1, 1, 1), -0.4))],
        "two tensors": [("Max", "a0")],
    }
    for what, clamps in cases.items():
        _model(tmp_path / "m.onnx", clamps)
        assert constant_clamps.as_clip(tmp_path / "m.onnx", tmp_path / "c.onnx") == 0, what


def test_the_int8_chain_runs_through_the_clamp(tmp_path):
    _model(tmp_path / "m.onnx", [("Max", np.full((1, 1, 1, 1), -0.4))])
    calib = Samples({"x": RNG.normal(0, 1, (64, 4, 12, 12)).astype(np.float32)}, None)
    summary = quantize_int8(tmp_path / "m.onnx", tmp_path / "int8.onnx", calib, Int8Config(), None)
    assert summary["clamps_as_clip"] == 1 and summary["quantized_ops"] == {"Conv": 2}
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    assert not [n for n in graph.node if n.op_type in ("Max", "Clip")]  # in the QuantizeLinear's range
    x = RNG.normal(0, 1, (32, 4, 12, 12)).astype(np.float32)
    ref, got = _run(tmp_path / "m.onnx", x), _run(tmp_path / "int8.onnx", x)
    assert 10 * np.log10(np.sum(ref**2) / np.sum((got - ref) ** 2)) > 25


def test_a_bound_a_branch_still_reads_is_kept(tmp_path):
    """The constant a Max read, read by name inside an If's branch too, stays in the graph."""
    out = [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)]
    then = helper.make_graph([helper.make_node("Add", ["y", "c"], ["z"])], "then", [], out)
    other = helper.make_graph([helper.make_node("Identity", ["y"], ["z"])], "else", [], out)
    save_onnx(
        tmp_path / "m.onnx",
        [
            helper.make_node("Max", ["x", "c"], ["y"]),
            helper.make_node("If", ["flag"], ["out"], then_branch=then, else_branch=other),
        ],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(-0.5, np.float32), "c")],
    )
    assert constant_clamps.as_clip(tmp_path / "m.onnx", tmp_path / "c.onnx") == 1
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    sess = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {"x": x, "flag": np.array(True)})
    np.testing.assert_allclose(got, np.maximum(x, -0.5) - 0.5)
