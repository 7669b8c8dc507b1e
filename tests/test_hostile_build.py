"""`edgekit build` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

from hostile import assert_refused, hashes_of


def test_careless_inputs(edgekit, tiny_artifact, work):
    """A missing artifact, a folder that is none, a precision the target lacks, no calibration
    samples, a TensorRT profile out of order: one sentence each, nothing built."""
    (work / "folder").mkdir()
    (work / "folder" / "notes.txt").write_text("not an artifact\n")
    onnx_file = tiny_artifact / "model.onnx"
    before = hashes_of(onnx_file)
    nncf = ("--quantizer", "nncf", "--calib", "random")
    for args, named in (
        ((work / "missing", "--target", "openvino"), "missing"),
        ((work / "folder", "--target", "openvino"), "folder"),
        ((tiny_artifact, "--target", "openvino", "--precision", "int8"), "int8"),
        ((tiny_artifact, "--target", "tensorrt", "--precision", "bf16"), "bf16"),
        ((tiny_artifact, "--target", "openvino", *nncf, "--calib-size", "0"), "--calib-size"),
        ((tiny_artifact, "--target", "tensorrt", "--min-batch", "0"), "--min-batch"),
        ((tiny_artifact, "--target", "tensorrt", "--min-batch", "8", "--max-batch", "2"), "min <= opt"),
        ((tiny_artifact, "--target", "openvino", "--workspace", "1G"), "workspace"),
        ((tiny_artifact, "--target", "tensorrt", "--workspace", "lots"), "lots"),
    ):
        r = edgekit("build", *args, "-o", work / "out")
        assert named in assert_refused(r, work / "out", [onnx_file], before)
