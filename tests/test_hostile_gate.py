"""`edgekit gate` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

from hostile import assert_refused, hashes_of


def test_json_is_a_directory(edgekit, work):
    msg = assert_refused(edgekit("gate", work / "results.jsonl", "--json", work), work / "never")
    assert "--json" in msg and "is a directory" in msg


def test_junit_under_a_file(edgekit, work):
    blocker = work / "notes.txt"
    blocker.write_text("a file\n")
    out = blocker / "junit.xml"
    msg = assert_refused(
        edgekit("gate", work / "results.jsonl", "--junit", out), out, [blocker], hashes_of(blocker)
    )
    assert "notes.txt" in msg and "not a directory" in msg


def test_record_with_a_wrongly_typed_key(edgekit, work):
    import json

    results = work / "results.jsonl"
    record = {"artifact": "a", "runtime": "ort", "ok": True, "target": "cpu", "variant": "fp32"}
    results.write_text(json.dumps({**record, "latency": "fast"}) + "\n")
    config = work / "edgekit.yaml"
    config.write_text(
        "model: {path: m.pt2}\nvariants: {fp32: []}\ntargets: [{name: cpu, variants: [fp32]}]\n"
        "gates: [{target: cpu, variant: fp32, max_latency_ms: {p50: 10}}]\n"
    )
    out = work / "verdict.json"
    msg = assert_refused(
        edgekit("gate", results, "--config", config, "--json", out), out, [results], hashes_of(results)
    )
    assert "record 1 of" in msg and "not a benchmark record" in msg and "latency" in msg
