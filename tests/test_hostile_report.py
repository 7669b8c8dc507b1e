"""`edgekit report` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hostile import assert_refused, hashes_of


@pytest.fixture
def results(tmp_path) -> Path:
    """A results file as `edgekit bench --json` writes it (one record)."""
    from edgekit.benchmarks.results import RESULTS_FILE

    d = tmp_path / "results"
    d.mkdir()
    record = {"artifact": "a", "runtime": "ort", "ok": True, "latency_ms": {"p50": 1.0, "p90": 1.1}}
    (d / RESULTS_FILE).write_text(json.dumps(record) + "\n")
    return d


def test_output_is_an_existing_file(edgekit, results, work):
    existing = work / "report"
    existing.write_text("a file\n")
    before = hashes_of(existing)
    msg = assert_refused(
        edgekit("report", results, "--format", "md", "-o", existing), existing, [existing], before
    )
    assert "is an existing file" in msg


def test_output_where_nothing_can_be_created(edgekit, results):
    out = Path("/proc/edgekit-test/report")
    msg = assert_refused(edgekit("report", results, "--format", "md", "-o", out), out)
    assert str(out) in msg


def test_record_with_a_wrongly_typed_key(edgekit, work):
    results = work / "results.jsonl"
    results.write_text(json.dumps({"artifact": "a", "runtime": "ort", "ok": True, "latency": "fast"}) + "\n")
    out = work / "out"
    r = edgekit("report", results, "--format", "md", "-o", out)
    msg = assert_refused(r, out, [results], hashes_of(results))
    assert "record 1 of" in msg and "not a benchmark record" in msg and "latency" in msg
