"""ONNX files as other exporters write them: unnamed or -1 dynamic axes, --input-shape on them, and
opsets below the 13 that per-channel INT8 needs (upgraded by onnx's version converter)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hostile import assert_refused, hashes_of


def classifier(path, opset: int, hw=(None, None)):
    """Conv+Relu+GlobalAveragePool+Flatten+Gemm with input [-1, 3, ?, ?] (a -1 batch, unnamed H
    and W, or named HW), as a non-PyTorch exporter writes an OCR direction classifier."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w": rng.normal(0, 0.3, (8, 3, 3, 3)),
        "b": np.zeros(8),
        "fw": rng.normal(0, 0.3, (4, 8)),
        "fb": np.zeros(4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, *hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, "classifier", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.save(model, str(path))
    return path


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(1).random((8, 3, 48, 192), dtype=np.float32))
    return path


def test_unnamed_axes_get_own_names(tmp_path):
    """H and W of [-1, 3, ?, ?] are not the batch: each gets a name of its own."""
    from edgekit.artifact import LoadOptions
    from edgekit.model import load_model

    spec = load_model(classifier(tmp_path / "m.onnx", 11), LoadOptions()).input_spec
    shape = spec.inputs[0].shape
    assert shape[0] == "batch" and shape[1] == 3
    assert len({shape[0], shape[2], shape[3]}) == 3, shape


def test_opset11_int8_with_input_shape(edgekit, tmp_path, calib):
    """An opset-11 [-1, 3, ?, ?] classifier compresses with --int8 and --input-shape 1,3,48,192:
    H and W fixed, the batch dynamic, and the upgrade to opset 13 recorded."""
    import onnx

    out = tmp_path / "out"
    r = edgekit(
        "compress", classifier(tmp_path / "m.onnx", 11), "--int8", "--input-shape", "1,3,48,192",
        "--calib", calib, "-o", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["input_spec"]["inputs"][0]["shape"] == ["batch", 3, 48, 192]
    export = next(p for p in manifest["passes"] if p["name"] == "export")
    assert export["summary"]["opset_before"] == 11 and export["summary"]["opset"] == 13
    assert "onnx.version_converter" in export["summary"]["imported"]
    assert "export" in manifest["verification"] and "int8" in manifest["verification"]
    model = onnx.load(str(out / "model.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == 13
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, 48, 192]


def test_opset12_per_channel_int8(edgekit, tmp_path, calib):
    """An opset-12 model gets per-channel INT8 (a scale per output channel), verified, exit 0."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "out"
    r = edgekit("compress", classifier(tmp_path / "m.onnx", 12), "--int8", "--calib", calib, "-o", out)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["verification"]["int8"]["samples"] > 0
    graph = onnx.load(str(out / "model.onnx")).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    scales = [
        inits[n.input[1]] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[1] in inits
    ]
    assert any(s.size == 8 for s in scales), [s.shape for s in scales]


def test_input_shape_contradicts_fixed_axis(edgekit, tmp_path, calib):
    """A size that contradicts an axis the model fixes: one sentence naming the axis."""
    model = classifier(tmp_path / "m.onnx", 11)
    hashes = hashes_of(model, calib)
    out = tmp_path / "out"
    r = edgekit("compress", model, "--int8", "--input-shape", "1,4,48,192", "--calib", calib, "-o", out)
    sentence = assert_refused(r, out, [model, calib], hashes)
    assert "axis 1" in sentence and "3" in sentence and "4" in sentence


def test_upgrade_failure_is_one_sentence(tmp_path):
    """A file onnx's version converter cannot upgrade: one sentence naming its opset and the
    converter's first line, nothing written."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.artifact import InputSpec, TensorSpec
    from edgekit.errors import EdgekitError
    from edgekit.export.onnx import copy_onnx

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])
    graph = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "g", [x], [y])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(src))
    out = tmp_path / "out"
    out.mkdir()
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=[1, 3])])
    with pytest.raises(EdgekitError) as e:
        copy_onnx(src, out, spec, 13, "int8")
    sentence = str(e.value)
    assert "opset 11" in sentence and "int8" in sentence and "NoSuchOp" in sentence
    assert "\n" not in sentence and sentence.endswith(".")
    assert not list(out.iterdir())


def test_shared_axis_name_stays_shared(tmp_path):
    """A symbol the graph gives two inputs stays one axis: both keep it, and --input-shape giving it
    two sizes is one sentence; their unnamed axes stay apart."""
    import onnx
    from onnx import TensorProto, helper

    from edgekit.artifact import LoadOptions
    from edgekit.errors import EdgekitError
    from edgekit.model import load_model

    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, "seq", None])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, "seq", None])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y])
    src = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(src))
    shapes = [t.shape for t in load_model(src, LoadOptions()).input_spec.inputs]
    assert shapes[0][:2] == shapes[1][:2] == ["batch", "seq"] and shapes[0][2] != shapes[1][2]
    with pytest.raises(EdgekitError, match=r"'seq'.* 8 and 9"):
        load_model(src, LoadOptions(input_shapes={"a": [1, 8, 4], "b": [1, 9, 4]}))


def test_question_mark_axes_are_unknown_not_shared(edgekit, tmp_path):
    """PaddlePaddle writes [-1, 3, ?, ?]: `?` means unknown, not one size for H and W, so
    --input-shape 1,3,48,192 is taken (it was refused as one axis given two sizes) and fixes each."""
    import onnx

    model = classifier(tmp_path / "m.onnx", 13, hw=("?", "?"))
    out = tmp_path / "out"
    r = edgekit("compress", model, "--input-shape", "x:1,3,48,192", "--calib", "random", "-o", out)
    assert r.returncode == 0, r.stderr
    dims = onnx.load(str(out / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 48, 192]


def test_open_axes_take_their_size_from_the_data(edgekit, tmp_path, calib):
    """H and W left unknown by the model are sized by the calibration data: the manifest records one
    sample's shape, and the bench times inputs of that size; random calibration, which has no size
    for them, is refused naming --input-shape."""
    from edgekit.artifact import read_manifest
    from edgekit.model import example_inputs

    model = classifier(tmp_path / "m.onnx", 13)
    out = tmp_path / "out"
    r = edgekit("compress", model, "--int8", "--calib", calib, "-o", out)
    assert r.returncode == 0, r.stderr
    spec = read_manifest(out).input_spec
    assert spec.inputs[0].example == [1, 3, 48, 192]
    assert example_inputs(spec, batch=4)["x"].shape == (4, 3, 48, 192)
    r = edgekit("bench", out, "--runs", "2", "--warmup", "1")
    assert r.returncode == 0, r.stderr
    before = hashes_of(model)
    r = edgekit("compress", model, "--int8", "--calib", "random", "-o", tmp_path / "noise")
    assert "--input-shape x:1,3," in assert_refused(r, tmp_path / "noise", [model], before)


def test_an_output_shape_the_model_contradicts_is_left_out(edgekit, tmp_path):
    """ddddocr's recognizer declares its output [1, seqlen] and computes [T, 1, C] (time-major; here
    [1, seqlen] and [T, C]): ONNX
    Runtime warned on every run, and the artifact carried the wrong layout. The imported file's
    declared shape is left out where one run contradicts it, and the manifest says what it was."""
    import onnx
    from models import save_onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).normal(0, 0.3, (6, 4, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1]),
        helper.make_node("Transpose", ["c"], ["t"], perm=[2, 0, 1]),
        helper.make_node("Squeeze", ["t"], ["y"]),  # [T, 6]: a rank ONNX's shape inference leaves open
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, "T"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen"])
    save_onnx(tmp_path / "rec.onnx", nodes, [x], [y], [numpy_helper.from_array(w, "w")])
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(size=(4, 4, 10)).astype(np.float32))
    r = edgekit("compress", tmp_path / "rec.onnx", "--calib", tmp_path / "calib.npz", "-o", tmp_path / "a")
    assert r.returncode == 0, r.stderr
    assert "VerifyOutputSizes" not in r.stderr  # ORT's warning about the declared shape
    manifest = json.loads((tmp_path / "a" / "edgekit.json").read_text())
    cleared = manifest["passes"][0]["summary"]["output_shapes_cleared"]
    assert cleared == {"y": "declared [1, 'seqlen'], computes [10, 6]"}
    out = onnx.load(str(tmp_path / "a" / "model.onnx")).graph.output[0]
    assert out.name == "y" and not out.type.tensor_type.HasField("shape")


def test_weights_listed_as_inputs_ir3(edgekit, tmp_path, calib):
    """IR 3 (the ONNX Model Zoo's Caffe2 exports) lists every weight as a graph input too. ONNX
    Runtime's optimizer, before calibration, shared two equal biases and dropped one's initializer
    but not its input: "Required inputs (['b1']) are missing", exit 2. The artifact keeps them as
    weights only (IR 4), and quantizes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)),
        "b1": np.zeros(8),
        "w2": rng.normal(0, 0.3, (8, 8, 3, 3)),
        "b2": np.zeros(8),  # equal to b1: ONNX Runtime shares them
        "fw": rng.normal(0, 0.3, (4, 8)),
        "fb": np.zeros(4),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    listed = [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims)) for t in inits]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 48, 192])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "caffe2", [x, *listed], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 3
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    before = hashes_of(src)

    out = tmp_path / "out"
    r = edgekit("compress", src, "--int8", "--calib", calib, "-o", out)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "edgekit.json").read_text())
    assert [i["name"] for i in manifest["input_spec"]["inputs"]] == ["x"]
    assert manifest["verification"]["int8"]["samples"] > 0
    written = onnx.load(str(out / "model.onnx"))
    assert [v.name for v in written.graph.input] == ["x"] and written.ir_version >= 4
    assert hashes_of(src) == before  # the user's file as it was
