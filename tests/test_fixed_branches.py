"""Control flow decided by an input the data holds constant is decided before INT8: Silero VAD's
default file picks its 16 kHz or 8 kHz network in an If on `sr`, every layer inside a branch where
ONNX Runtime's static quantizer does not reach. With `sr` constant (`--calib-const sr=16000`, or a
0-d array in the .npz) the taken branch is inlined and quantized; the input stays declared."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.batching import Stacked
from edgekit.compress import fixed_branches
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _model(path) -> None:
    """x [N, 4, 16], sr (int64 scalar) -> If(sr == 16000): a Conv+Relu of x with one weight, else
    with another: all compute inside the branches, read from outside."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 4, 3)).astype(np.float32), f"w{k}") for k in (16, 8)
    ]
    rate = numpy_helper.from_array(np.array(16000, np.int64), "rate")

    def branch(k: int):
        return helper.make_graph(
            [
                helper.make_node("Conv", ["x", f"w{k}"], [f"c{k}"], f"conv{k}", pads=[1, 1]),
                helper.make_node("Relu", [f"c{k}"], [f"y{k}"], f"relu{k}"),
            ],
            f"rate{k}",
            [],
            [helper.make_tensor_value_info(f"y{k}", TensorProto.FLOAT, None)],
        )

    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "rate"], ["is16k"], "equal"),
            helper.make_node("If", ["is16k"], ["y"], "if", then_branch=branch(16), else_branch=branch(8)),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 16]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16])],
        [*weights, rate],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(path, x: np.ndarray, sr: int) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x, "sr": np.array(sr, np.int64)})[0]


def test_a_constant_inputs_branch_is_inlined_and_quantized(tmp_path):
    _model(tmp_path / "fp32.onnx")
    x = np.random.default_rng(1).normal(size=(64, 4, 16)).astype(np.float32)
    inputs = Stacked({"x": x, "sr": np.full(64, 16000, np.int64)}, {"x": 0, "sr": None})  # as loaded
    calib = Samples(inputs, None, {"constants": {"sr": 16000}})
    summary = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib, Int8Config(), None)
    assert summary["fixed_branches"] == {"ifs_inlined": 1, "for": {"sr": 16000}}
    assert summary["quantized_ops"] == {"Conv": 1}
    int8 = onnx.load(str(tmp_path / "int8.onnx")).graph
    assert [i.name for i in int8.input] == ["x", "sr"]  # still declared: callers feed it as before
    assert not any(n.op_type == "If" for n in int8.node)
    ref, got = _run(tmp_path / "fp32.onnx", x, 16000), _run(tmp_path / "int8.onnx", x, 16000)
    assert 10 * np.log10(np.sum(ref**2) / np.sum((got - ref) ** 2)) > 30


def test_only_conditions_computed_from_the_constants_are_decided(tmp_path):
    _model(tmp_path / "fp32.onnx")
    graph = onnx.load(str(tmp_path / "fp32.onnx")).graph
    assert fixed_branches.decided(graph, {"sr"}) == ["if"]
    assert fixed_branches.decided(graph, {"x"}) == []  # the condition does not read x
    assert fixed_branches.decided(graph, set()) == []
    assert fixed_branches.fold(tmp_path / "fp32.onnx", tmp_path / "f.onnx", {}) == {}
    assert not (tmp_path / "f.onnx").exists()


def test_the_constant_comes_from_the_data_and_its_absence_is_explained(edgekit, work):
    """From the CLI: a 0-d array in the .npz is the constant (--calib-const reaches the same record:
    test_data_inputs), and where the data gives none the refusal names the input and the flag."""
    _model(work / "fp32.onnx")
    x = np.random.default_rng(1).normal(size=(16, 4, 16)).astype(np.float32)
    np.savez(work / "rate.npz", x=x, sr=np.int64(16000))  # a 0-d array: one value for every sample
    r = edgekit("compress", work / "fp32.onnx", "--int8", "--calib", work / "rate.npz", "-o", work / "npz")
    assert r.returncode == 0, r.stderr
    np.savez(work / "rates.npz", x=x, sr=np.full(16, 16000, np.int64))  # one per sample: not a constant
    r = edgekit("compress", work / "fp32.onnx", "--int8", "--calib", work / "rates.npz", "-o", work / "no")
    assert r.returncode == 2, r.stderr
    assert "give 'sr' the value it always has (--calib-const sr=VALUE" in r.stderr
    assert not (work / "no").exists()


def test_a_branch_the_data_decides_stays_fp32_and_the_summary_says_so(tmp_path):
    """A cascade (openWakeWord's hey_jarvis): a first network's score decides in an If whether a
    verifier network runs. The first is quantized; the verifier, out of the quantizer's reach, is
    counted as fp32 in the summary rather than left out of it."""
    rng = np.random.default_rng(0)
    w1, w2 = (
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 1)).astype(np.float32), n) for n in ("w1", "w2")
    )
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half")
    verifier = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w2"], ["v"]), helper.make_node("Sigmoid", ["v"], ["p2"])],
        "verifier", [], [helper.make_tensor_value_info("p2", TensorProto.FLOAT, None)],
    )  # fmt: skip
    first = helper.make_graph([helper.make_node("Identity", ["p1"], ["kept"])], "first", [], [
        helper.make_tensor_value_info("kept", TensorProto.FLOAT, None)
    ])  # fmt: skip
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["s"]),
            helper.make_node("Sigmoid", ["s"], ["p1"]),
            helper.make_node("ReduceMax", ["p1"], ["top"], keepdims=0),
            helper.make_node("GreaterOrEqual", ["top", "half"], ["run_verifier"]),
            helper.make_node("If", ["run_verifier"], ["p"], then_branch=verifier, else_branch=first),
        ],
        "cascade",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 1])],
        [w1, w2, half],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    calib = Samples({"x": rng.normal(size=(64, 16)).astype(np.float32)}, None)
    summary = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calib, Int8Config(), None)
    assert summary["quantized_ops"] == {"MatMul": 1}
    assert summary["fp32_in_control_flow"] == {"MatMul": 1}
