"""`edgekit run` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

from hostile import assert_refused, hashes_of


def test_junit_is_a_directory(edgekit, work):
    """Checked before the config is even read, so before any variant is built."""
    msg = assert_refused(
        edgekit("run", work / "edgekit.yaml", "--junit", work, "-o", work / "res"), work / "res"
    )
    assert "--junit" in msg and "is a directory" in msg


def test_output_is_an_existing_file(edgekit, work):
    existing = work / "res"
    existing.write_text("a file\n")
    r = edgekit("run", work / "edgekit.yaml", "-o", existing)
    msg = assert_refused(r, existing, [existing], hashes_of(existing))
    assert "is an existing file" in msg
