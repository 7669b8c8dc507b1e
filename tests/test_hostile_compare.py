"""`edgekit compare` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

from hostile import assert_refused


def test_json_is_a_directory(edgekit, tiny_artifact, work):
    r = edgekit("compare", tiny_artifact, "--runtime", "ort,openvino", "--json", work)
    msg = assert_refused(r, work / "never")
    assert "is a directory" in msg


def test_measurement_options_out_of_range(edgekit, tiny_artifact, work):
    """As bench: --timeout, --threads, --warmup and --rounds out of range are one sentence each."""
    for args in (
        ("--timeout", "0"),
        ("--timeout", "-5"),
        ("--threads", "-1"),
        ("--warmup", "-1"),
        ("--rounds", "0"),
    ):
        r = edgekit("compare", tiny_artifact, tiny_artifact, *args, "--json", work / "out")
        assert args[0] in assert_refused(r, work / "out")
