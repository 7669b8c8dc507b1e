"""Bad inputs through the real `edgekit` command: each ends in one plain sentence on stderr,
exit code 2, no traceback, no output directory and no staging leftovers, and the input untouched.
(Ctrl-C and SIGTERM: tests/test_hostile_compress.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from hostile import SHAPE, assert_refused, hashes_of, sha256


def test_missing_model_file(edgekit, work):
    out = work / "out"
    msg = assert_refused(edgekit("export", work / "nothere.pt", "-o", out), out)
    assert "nothere.pt" in msg and "does not exist" in msg


def test_truncated_torchscript_file(edgekit, tiny, work):
    data = (tiny / "model.ts.pt").read_bytes()
    model = work / "truncated.pt"
    model.write_bytes(data[: len(data) // 2])
    before = hashes_of(model)
    out = work / "out"
    msg = assert_refused(edgekit("export", model, "--input-shape", SHAPE, "-o", out), out, [model], before)
    assert "truncated.pt" in msg and "truncated or corrupt" in msg


def test_text_file_named_onnx(edgekit, work):
    model = work / "model.onnx"
    model.write_text("this is not a model\n")
    before = hashes_of(model)
    out = work / "out"
    msg = assert_refused(edgekit("export", model, "-o", out), out, [model], before)
    assert "model.onnx" in msg and "not a valid ONNX model" in msg


def test_pickled_module_needs_trust_pickle(edgekit, tiny, work):
    model = tiny / "pickled.pt"
    before = hashes_of(model)
    out = work / "out"
    msg = assert_refused(edgekit("export", model, "--input-shape", SHAPE, "-o", out), out, [model], before)
    assert "pickled" in msg and "--trust-pickle" in msg

    r = edgekit("export", model, "--trust-pickle", "--input-shape", SHAPE, "-o", out)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "edgekit.json").read_text())
    assert m["source"]["kind"] == "pickle"
    assert m["input_spec"]["inputs"][0]["shape"] == ["batch", 1, 16, 16]
    assert sha256(model) == before[model]


def test_state_dict_needs_arch(edgekit, tiny, work):
    model = tiny / "weights.pt"
    before = hashes_of(model)
    out = work / "out"
    r = edgekit("export", model, "--input-shape", SHAPE, "-o", out, cwd=tiny)
    msg = assert_refused(r, out, [model], before)
    assert "state_dict" in msg and "--arch" in msg

    r = edgekit("export", model, "--arch", "tinynet:net", "--input-shape", SHAPE, "-o", out, cwd=tiny)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "edgekit.json").read_text())["source"]["kind"] == "state_dict"


def test_wrong_input_shape(edgekit, tiny, work):
    model = tiny / "model.ts.pt"
    before = hashes_of(model)
    out = work / "out"
    r = edgekit("export", model, "--input-shape", "1,3,32,32", "-o", out)
    msg = assert_refused(r, out, [model], before)
    assert "1,3,32,32" in msg and "--input-shape" in msg
    assert "channels" in msg  # the cause (1 channel expected, 3 given), not TorchScript's preamble


def test_empty_calibration_folder(edgekit, tiny, work):
    calib = work / "calib"
    calib.mkdir()
    model = tiny / "model.ts.pt"
    before = hashes_of(model)
    out = work / "out"
    r = edgekit("compress", model, "--input-shape", SHAPE, "--int8", "--calib", calib, "-o", out)
    msg = assert_refused(r, out, [model], before)
    assert str(calib) in msg and "no images" in msg


def test_undecodable_calibration_image(edgekit, tiny, work, png):
    calib = work / "calib"
    png(calib / "cat" / "ok.png")
    (calib / "dog").mkdir()
    (calib / "dog" / "x.png").write_bytes(b"\x89PNG this is garbage, not an image" * 4)
    model = tiny / "model.ts.pt"
    before = hashes_of(model)
    out = work / "out"
    r = edgekit("compress", model, "--input-shape", SHAPE, "--int8", "--calib", calib, "-o", out)
    msg = assert_refused(r, out, [model], before)
    assert "x.png" in msg and "cannot be decoded" in msg


def test_output_is_the_input_file(edgekit, tiny, work):
    model = work / "model.pt"
    model.write_bytes((tiny / "model.ts.pt").read_bytes())
    before = hashes_of(model)
    r = edgekit("export", model, "--input-shape", SHAPE, "-o", model)
    msg = assert_refused(r, model, [model], before)
    assert "would overwrite the input" in msg
    assert model.is_file()


def test_output_is_the_folder_holding_the_input(edgekit, tiny, work):
    model = work / "model.pt"
    model.write_bytes((tiny / "model.ts.pt").read_bytes())
    before = hashes_of(model)
    r = edgekit("export", model, "--input-shape", SHAPE, "-o", work, "--force")
    assert r.returncode == 2 and "would overwrite the input" in r.stderr
    assert sorted(p.name for p in work.iterdir()) == ["model.pt"]
    assert sha256(model) == before[model]


def test_output_under_a_file(edgekit, tiny, work):
    blocker = work / "notes.txt"
    blocker.write_text("a file, not a folder\n")
    model = tiny / "model.ts.pt"
    before = hashes_of(model, blocker)
    out = blocker / "out"
    r = edgekit("export", model, "--input-shape", SHAPE, "-o", out)
    msg = assert_refused(r, out, [model, blocker], before)
    assert "notes.txt" in msg and "not a directory" in msg


def test_output_where_nothing_can_be_created(edgekit, tiny):
    # /proc refuses new entries even to root (chmod would not stop root).
    model = tiny / "model.ts.pt"
    before = hashes_of(model)
    out = Path("/proc/edgekit-test/out")
    r = edgekit("export", model, "--input-shape", SHAPE, "-o", out)
    msg = assert_refused(r, out, [model], before)
    assert str(out) in msg
    assert not Path("/proc/edgekit-test").exists()


def test_inspect_a_folder_that_is_not_an_artifact(edgekit, work):
    r = edgekit("inspect", work)
    assert r.returncode == 2
    assert r.stderr.startswith("edgekit: error: ") and "not an edgekit artifact" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr
