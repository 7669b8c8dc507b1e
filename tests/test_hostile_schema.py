"""`edgekit schema` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

from pathlib import Path

from hostile import assert_refused


def test_output_is_a_directory(edgekit, work):
    msg = assert_refused(edgekit("schema", "-o", work), work / "never")
    assert "is a directory" in msg


def test_output_where_nothing_can_be_created(edgekit):
    out = Path("/proc/edgekit-test/schema.json")
    assert str(out) in assert_refused(edgekit("schema", "-o", out), out)
