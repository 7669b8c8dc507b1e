"""`edgekit export` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from hostile import SHAPE, assert_refused, hashes_of


def test_random_bytes_named_pt(edgekit, work):
    for name, trust in (("random.pt", ()), ("random.pt2", ()), ("random.pt", ("--trust-pickle",))):
        model = work / name
        model.write_bytes(np.random.default_rng(0).bytes(4096))
        before = hashes_of(model)
        out = work / "out"
        r = edgekit("export", model, *trust, "--input-shape", SHAPE, "-o", out)
        msg = assert_refused(r, out, [model], before)
        assert str(model) in msg and "not a model file edgekit can read" in msg, msg
        assert "TorchScript" in msg and "ONNX" in msg and "fully pickled" not in msg, msg


def test_fifo_model_path(edgekit, work):
    fifo = work / "model.pt"
    os.mkfifo(fifo)
    out = work / "out"
    for model in (fifo, Path("/dev/zero"), work):
        r = edgekit("export", model, "--input-shape", SHAPE, "-o", out, timeout=60)
        msg = assert_refused(r, out)
        assert str(model) in msg and "not a regular file" in msg, msg


def test_arch_factory_that_fails(edgekit, tiny, work):
    """A factory that raises, a name that is no function, a module that raises as it is imported:
    one sentence naming the factory and the error's first line, never a traceback."""
    import shutil

    shutil.copy(tiny / "weights.pt", work / "weights.pt")
    (work / "archbad.py").write_text(
        "CONSTANT = 3\n\n\ndef raises():\n    raise ValueError('factory exploded\\nsecond line')\n"
    )
    (work / "archbroken.py").write_text("raise RuntimeError('broken at import')\n")
    weights = work / "weights.pt"
    cases = {
        "archbad:raises": ["archbad:raises", "ValueError", "factory exploded"],
        "archbad:CONSTANT": ["archbad:CONSTANT", "not a function", "int"],
        "archbroken:net": ["archbroken:net", "RuntimeError", "broken at import"],
    }
    for arch, named in cases.items():
        r = edgekit("export", weights, "--arch", arch, "--input-shape", SHAPE, "-o", work / "out", cwd=work)
        msg = assert_refused(r, work / "out", [weights], hashes_of(weights))
        assert all(n in msg for n in named), msg
        assert "second line" not in msg


def test_input_shape_too_large_for_memory(edgekit, tiny, work):
    """Refused before anything is allocated, naming the shape, its size and the memory there is;
    a dimension that is zero or negative is refused too."""
    model = tiny / "model.ts.pt"
    huge = "1,3,1000000,1000000"  # 11 TiB of float32: no machine has it
    r = edgekit("export", model, "--input-shape", huge, "-o", work / "out")
    msg = assert_refused(r, work / "out", [model], hashes_of(model))
    assert huge in msg and "GiB" in msg and "available" in msg, msg
    for shape in ("0,1,16,16", "1,1,-1,16"):
        r = edgekit("export", model, f"--input-shape={shape}", "-o", work / "out")
        assert shape in assert_refused(r, work / "out", [model], hashes_of(model))


def test_onnx_op_onnx_runtime_cannot_run(edgekit, work):
    """An unknown op, in the standard domain or a custom one: the sentence names the op and its
    node and points to `edgekit check`, not ONNX Runtime's traceback."""
    import onnx
    from onnx import TensorProto, helper

    for op, domain in (("NotARealOp", ""), ("NotARealOp", "my.domain")):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
        relu = helper.make_node("Relu", ["x"], ["h"], name="relu")
        odd = helper.make_node(op, ["h"], ["y"], name="odd_node", domain=domain)
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        model = work / f"odd-{domain or 'default'}.onnx"
        onnx.save(
            helper.make_model(helper.make_graph([relu, odd], "g", [x], [y]), opset_imports=opsets), model
        )
        r = edgekit("export", model, "-o", work / "out")
        msg = assert_refused(r, work / "out", [model], hashes_of(model))
        assert "NotARealOp" in msg and "odd_node" in msg and "edgekit check" in msg, msg


def test_opset_outside_the_exporters_range(edgekit, tiny, work):
    """--opset 1 used to write opset 18 and record 1: refused with the range, and the manifest
    records the opset the written file has."""
    import onnx

    model = tiny / "model.ts.pt"
    for opset in ("1", "99"):
        r = edgekit("export", model, "--input-shape", SHAPE, "--opset", opset, "-o", work / "out")
        msg = assert_refused(r, work / "out", [model], hashes_of(model))
        assert f"--opset {opset}" in msg and "18 to " in msg, msg
    r = edgekit("export", model, "--input-shape", SHAPE, "-o", work / "out")
    assert r.returncode == 0, r.stderr
    written = next(
        o.version for o in onnx.load(str(work / "out" / "model.onnx")).opset_import if o.domain == ""
    )
    passes = json.loads((work / "out" / "edgekit.json").read_text())["passes"]
    assert next(p for p in passes if p["name"] == "export")["config"]["opset"] == written


def test_tolerance_not_a_positive_finite_number(edgekit, tiny, work):
    """nan turned a perfect export into "diverges"; 0, negative, nan and inf are all refused."""
    model = tiny / "model.ts.pt"
    for value in ("nan", "inf", "0", "-1e-3"):
        r = edgekit("export", model, "--input-shape", SHAPE, f"--tolerance={value}", "-o", work / "out")
        assert "--tolerance" in assert_refused(r, work / "out", [model], hashes_of(model))


def test_input_shape_by_input_name(edgekit, tiny, work):
    """`--input-shape input:1,1,16,16` (name:shape, as trtexec writes it) is the named input's
    shape, and the manifest records it as given."""
    r = edgekit("export", tiny / "model.ts.pt", "--input-shape", "input:1,1,16,16", "-o", work / "out")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((work / "out" / "edgekit.json").read_text())
    [spec] = manifest["input_spec"]["inputs"]
    assert spec == {"name": "input", "shape": ["batch", 1, 16, 16], "dtype": "float32"}
    assert manifest["load"]["input_shapes"] == {"input": [1, 1, 16, 16]}


def test_input_shape_naming_no_input(edgekit, tiny, work):
    """A name the model has no input of: one sentence listing the inputs it has."""
    model = tiny / "model.ts.pt"
    r = edgekit("export", model, "--input-shape", "image:1,1,16,16", "-o", work / "out")
    msg = assert_refused(r, work / "out", [model], hashes_of(model))
    assert "'image', which is not an input of" in msg and "its inputs: input." in msg, msg


def test_input_shapes_some_named_some_not(edgekit, tiny, work):
    model = tiny / "model.ts.pt"
    shapes = ("--input-shape", "input:1,1,16,16", "--input-shape", "1,4")
    r = edgekit("export", model, *shapes, "-o", work / "out")
    msg = assert_refused(r, work / "out", [model], hashes_of(model))
    assert "--input-shape" in msg and "name every input shape" in msg, msg
