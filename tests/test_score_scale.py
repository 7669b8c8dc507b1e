"""Attention scores' constant scale folded into the query projection (edgekit.compress.score_scale)."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import score_scale

T, D, H = 6, 8, 2  # tokens, model width, heads


def _attention(path, op: str = "Div", q_also_out: bool = False):
    """X [1, T, D] -> Q, K projections (MatMul + bias), heads split (Reshape, Transpose), scores
    Q @ K^T scaled by OP with sqrt(D / H), Softmax: a BERT export's self-attention scores."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((D, D)).astype(np.float32), name) for name in ("wq", "wk")
    ] + [numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), name) for name in ("bq", "bk")]
    inits += [
        numpy_helper.from_array(np.array([1, T, H, D // H], np.int64), "heads"),
        numpy_helper.from_array(
            np.array(np.sqrt(D / H) if op == "Div" else 1 / np.sqrt(D / H), np.float32), "c"
        ),
    ]
    nodes = []
    for s in ("q", "k"):
        nodes += [
            helper.make_node("MatMul", ["x", f"w{s}"], [f"{s}0"]),
            helper.make_node("Add", [f"b{s}", f"{s}0"], [f"{s}1"]),
            helper.make_node("Reshape", [f"{s}1", "heads"], [f"{s}2"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["q2"], ["q3"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k2"], ["k3"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["q3", "k3"], ["scores"]),
        helper.make_node(op, ["scores", "c"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"], axis=-1),
    ]
    outputs = [helper.make_tensor_value_info("probs", TensorProto.FLOAT, None)]
    if q_also_out:
        outputs.append(helper.make_tensor_value_info("q1", TensorProto.FLOAT, None))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D])
    graph = helper.make_graph(nodes, "attention", [x], outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _probs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["probs"], {"x": x})[0]


def test_the_scale_moves_into_the_query_projection_and_the_scores_stay(tmp_path):
    x = np.random.default_rng(1).standard_normal((1, T, D)).astype(np.float32)
    for op in ("Div", "Mul"):
        src, dst = tmp_path / f"{op}.onnx", tmp_path / f"{op}_folded.onnx"
        _attention(src, op)
        assert score_scale.fold(src, dst) == 1
        graph = onnx.load(str(dst)).graph
        assert op not in {n.op_type for n in graph.node}
        assert "c" not in {i.name for i in graph.initializer}  # the scale read by nothing now
        np.testing.assert_allclose(_probs(dst, x), _probs(src, x), rtol=1e-5, atol=1e-6)
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        before = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}
        c = 1 / np.sqrt(D / H)
        np.testing.assert_allclose(inits["wq"], before["wq"] * c, rtol=1e-6)
        np.testing.assert_allclose(inits["bq"], before["bq"] * c, rtol=1e-6)
        np.testing.assert_array_equal(inits["wk"], before["wk"])  # K is left as it was


def test_a_query_read_elsewhere_keeps_the_scale(tmp_path):
    src = tmp_path / "a.onnx"
    _attention(src, q_also_out=True)  # the projection's output is also a model output: scaling it would show
    assert score_scale.fold(src, tmp_path / "b.onnx") == 0
    assert not (tmp_path / "b.onnx").exists()
