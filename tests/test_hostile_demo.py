"""`edgekit demo` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched (see docs/guide/errors.md)."""

from __future__ import annotations

from hostile import assert_refused, hashes_of


def test_work_dir_is_a_file(edgekit, work):
    existing = work / "demo"
    existing.write_text("a file\n")
    msg = assert_refused(edgekit("demo", "--work-dir", existing), existing, [existing], hashes_of(existing))
    assert "--work-dir" in msg and "is an existing file" in msg
