"""`edgekit sensitivity` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

import numpy as np
from hostile import SHAPE, assert_refused, hashes_of


def test_json_is_a_directory(edgekit, tiny, work):
    """Refused before the per-layer trials, not after them."""
    r = edgekit(
        "sensitivity", tiny / "model.ts.pt", "--input-shape", SHAPE, "--calib", "random", "--json", work
    )
    msg = assert_refused(r, work / "never")
    assert "--json" in msg and "is a directory" in msg


def test_careless_inputs(edgekit, tiny, work):
    """A missing model, a folder, no calibration or evaluation samples, a model already quantized
    (it failed with ONNX Runtime's traceback): one sentence each."""
    model = tiny / "model.ts.pt"
    int8 = ("--int8", "--calib", "random", "--calib-size", "8")
    r = edgekit("compress", model, "--input-shape", SHAPE, *int8, "-o", work / "int8")
    assert r.returncode == 0, r.stderr
    quantized = work / "int8" / "model.onnx"
    data = ("--calib", "random", "--eval", "random", "--calib-size", "4", "--eval-size", "4")
    for args, named in (
        ((work / "missing.pt", "--input-shape", SHAPE, *data), "missing.pt"),
        ((work, "--input-shape", SHAPE, *data), str(work)),
        ((model, "--input-shape", SHAPE, *data, "--calib-size", "0"), "--calib-size"),
        ((model, "--input-shape", SHAPE, *data, "--eval-size", "-2"), "--eval-size"),
        ((quantized, *data), "already quantized"),
    ):
        r = edgekit("sensitivity", *args, "-o", work / "out")
        assert named in assert_refused(r, work / "out", [model, quantized], hashes_of(model, quantized))


def test_eval_labels_outside_the_models_classes(edgekit, tiny_artifact, work):
    """Labels 1000 and -5 on a 3-class model gave 0 % top-1 for every layer and exit 0: refused,
    naming the label range found and the classes the model outputs (the tiny model's ONNX file)."""
    model = tiny_artifact / "model.onnx"
    x = np.random.default_rng(0).standard_normal((20, 1, 16, 16)).astype(np.float32)
    test = work / "test.npz"
    np.savez(test, x=x, y=np.array([1000, -5] * 10))
    before = hashes_of(model, test)
    argv = ("sensitivity", model, "--calib", "random", "--eval", test)
    msg = assert_refused(edgekit(*argv, "-o", work / "out"), work / "out", [model, test], before)
    assert str(test) in msg and "from -5 to 1000" in msg and "outputs 3 classes" in msg
