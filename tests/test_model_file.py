"""A pass's model past protobuf's limit is written with its tensors beside it, and still loads."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import model_file

W = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096


def _matmul() -> onnx.ModelProto:
    w = numpy_helper.from_array(W, "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_small_model_is_one_file(tmp_path):
    model_file.save(_matmul(), tmp_path / "m.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_large_model_keeps_its_tensors_beside_it(tmp_path, monkeypatch):
    monkeypatch.setattr(model_file, "PROTOBUF_LIMIT", 1000)  # a 16 KiB weight counts as large
    model_file.save(_matmul(), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data"]
    assert (tmp_path / "m.onnx").stat().st_size < 1000
    x = np.ones((1, 64), np.float32)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], x @ W, rtol=1e-6)
