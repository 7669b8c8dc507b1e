"""`edgekit init` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

from hostile import assert_refused, hashes_of


def test_dir_is_a_file(edgekit, work):
    existing = work / "project"
    existing.write_text("a file\n")
    msg = assert_refused(edgekit("init", "--dir", existing), existing, [existing], hashes_of(existing))
    assert "is an existing file" in msg


def test_a_template_path_is_a_directory(edgekit, work):
    (work / "edgekit.yaml").mkdir()
    r = edgekit("init", "--dir", work)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "is a directory" in r.stderr, r.stderr
    assert not (work / ".github").exists()
