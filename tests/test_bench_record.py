"""One bench record type: `edgekit gate` and `edgekit report` read what `bench -o`, `bench --json`,
`compare --json` and `run` write, and name a bench record's target and variant as docs/guide/ci.md
says (the edgekit.yaml target that measures the artifact's directory name on the record's runtime,
device and host)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

CONFIG = """\
model: {{path: model.pt2}}
variants:
  fp32: []
targets:
{targets}
gates:
{gates}
"""


# one xdist worker builds the module's fixtures once, instead of each worker its own
pytestmark = pytest.mark.xdist_group("bench_record")


def gate_config(root: Path, gates: str, targets: str = "  - {name: cpu, variants: [fp32]}") -> Path:
    path = root / "edgekit.yaml"
    path.write_text(CONFIG.format(targets=targets, gates=gates))
    return path


@pytest.fixture(scope="module")
def benched(tiny_artifact, edgekit, tmp_path_factory) -> Path:
    """`edgekit bench fp32 -o DIR`: DIR holds one record of the tiny fp32 artifact."""
    out = tmp_path_factory.mktemp("bench-o") / "results"
    r = edgekit("bench", tiny_artifact, "--runs", 30, "--warmup", 2, "-o", out)
    assert r.returncode == 0, r.stderr
    return out


def test_gate_on_bench_results_passes_a_generous_gate(benched, edgekit, tmp_path):
    gates = "  - {target: cpu, variant: fp32, max_size_mb: 100, max_latency_ms: {p50: 10000}}"
    verdict = tmp_path / "verdict.json"
    r = edgekit("gate", benched, "--config", gate_config(tmp_path, gates), "--json", verdict)
    assert r.returncode == 0, r.stdout + r.stderr
    v = json.loads(verdict.read_text())
    assert v["passed"] and [g["name"] for g in v["gates"]] == [
        "cpu/fp32 max_latency_ms.p50",
        "cpu/fp32 max_size_mb",
    ]
    assert all(g["status"] == "pass" and g["margin"] > 0 for g in v["gates"])


def test_gate_on_bench_results_fails_a_strict_gate(benched, edgekit, tmp_path):
    gates = "  - {target: cpu, variant: fp32, max_size_mb: 0.000001}"
    verdict = tmp_path / "verdict.json"
    r = edgekit("gate", benched, "--config", gate_config(tmp_path, gates), "--json", verdict)
    assert r.returncode == 1, r.stdout + r.stderr
    (g,) = json.loads(verdict.read_text())["gates"]
    assert g["status"] == "fail" and g["measured"] > g["threshold"]


def test_gate_names_bench_records_by_the_config_target_that_measures_them(benched, edgekit, tmp_path):
    targets = "  - {name: laptop, runtime: ort, device: cpu, variants: [fp32]}"
    gates = "  - {target: laptop, variant: fp32, max_size_mb: 100}"
    r = edgekit("gate", benched, "--config", gate_config(tmp_path, gates, targets))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "laptop/fp32 max_size_mb" in r.stdout


def test_gate_on_bench_results_of_another_runtime_names_what_they_hold(benched, edgekit, tmp_path):
    targets = "  - {name: cpu, runtime: openvino, variants: [fp32]}"
    gates = "  - {target: cpu, variant: fp32, max_size_mb: 100}"
    r = edgekit("gate", benched, "--config", gate_config(tmp_path, gates, targets))
    assert r.returncode == 2 and not r.stdout
    (line,) = r.stderr.splitlines()
    assert "no measurement of variant fp32 on target cpu" in line and "ort-cpu/fp32" in line


def test_report_and_gate_read_compare_json(tiny_artifact, edgekit, tmp_path):
    out = tmp_path / "compare.json"
    r = edgekit("compare", tiny_artifact, tiny_artifact, "--rounds", 3, "--seconds", 0.3, "--json", out)
    assert r.returncode == 0, r.stderr
    r = edgekit("report", out, "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert len((tmp_path / "report.csv").read_text().splitlines()) == 3  # header and the two records
    gates = "  - {target: cpu, variant: fp32, max_latency_ms: {p50: 10000}}"
    r = edgekit("gate", out, "--config", gate_config(tmp_path, gates))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "over 3 rounds" in r.stdout  # a compare record keeps its per-round values


def test_report_reads_bench_json(tiny_artifact, edgekit, tmp_path):
    out = tmp_path / "bench.json"
    r = edgekit("bench", tiny_artifact, "--runs", 10, "--warmup", 1, "--json", out)
    assert r.returncode == 0, r.stderr
    r = edgekit("report", out)
    assert r.returncode == 0, r.stderr
    assert "fp32" in r.stdout


def test_record_keeps_the_keys_it_was_written_with():
    from edgekit.benchmarks.record import record

    data = {"artifact": "a", "runtime": "ort", "ok": True, "latency": {"median_ms": 1.5, "cv": 0.1}, "x": 1}
    assert record(data) == data
