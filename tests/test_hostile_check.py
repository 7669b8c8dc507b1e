"""`edgekit check` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

import numpy as np
from hostile import SHAPE, assert_refused, hashes_of


def test_missing_external_data_file(edgekit, work):
    """The weights' file of an ONNX model is gone: exit 2 and one sentence naming it (check cannot
    run), for export too, instead of a finding with a cut-off OpenVINO reason."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    model = work / "model.onnx"
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        model,
        save_as_external_data=True,
        location="w.bin",
        size_threshold=0,
    )
    (work / "w.bin").unlink()
    for args in (("check", model, "--target", "openvino"), ("check", model, "--target", "ort")):
        msg = assert_refused(edgekit(*args), work / "out", [model], hashes_of(model))
        assert "w.bin" in msg and "missing" in msg, msg
    r = edgekit("export", model, "-o", work / "out")
    assert "w.bin" in assert_refused(r, work / "out", [model], hashes_of(model))


def test_opset_outside_the_exporters_range(edgekit, tiny, work):
    """`check --opset 1` exported at 18 and reported no findings: refused with the range."""
    model = tiny / "model.ts.pt"
    r = edgekit("check", model, "--input-shape", SHAPE, "--target", "ort", "--opset", "1")
    msg = assert_refused(r, work / "out", [model], hashes_of(model))
    assert "--opset 1" in msg and "18 to " in msg, msg


def test_input_shape_naming_no_input(edgekit, tiny, work):
    """check takes name:shape as export does, and refuses a name the model has no input of."""
    model = tiny / "model.ts.pt"
    r = edgekit("check", model, "--target", "ort", "--input-shape", "input:1,1,16,16")
    assert r.returncode == 0, r.stdout + r.stderr
    r = edgekit("check", model, "--target", "ort", "--input-shape", "image:1,1,16,16")
    msg = assert_refused(r, work / "out", [model], hashes_of(model))
    assert "'image', which is not an input of" in msg and "its inputs: input." in msg, msg
