"""`edgekit run` and `edgekit gate` end to end on the digits CNN, through the real CLI: a generous
gate passes (exit 0), a strict one fails (exit 1) naming the gate in stdout and in JUnit XML, a
second run reuses every cached stage, and a corrupted cache entry is rebuilt."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CONFIG = """\
model:
  path: {model}
data:
  calibration: {calib}
  calib_size: 64
  evaluation: {test}
  eval_size: 120
variants:
  fp32: []
  int8:
    - int8: {{calibration: minmax}}
targets:
  - name: cpu
    variants: [fp32, int8]
    seconds: 0.6
    rounds: 3
    warmup: 3
gates:
{gates}
"""

GENEROUS = """\
  - target: cpu
    variant: int8
    baseline: fp32
    max_accuracy_drop: 20
    min_accuracy: 50
    max_latency_ms: {p50: 1000, p99: 2000}
    min_speedup: 0.01
    max_size_mb: 100
    max_peak_memory_mb: 100000
"""

STRICT = """\
  - target: cpu
    variant: int8
    baseline: fp32
    max_accuracy_drop: 20
    max_size_mb: 0.01
    max_latency_ms: {p50: 0.0001}
    remeasure: 0
"""


def write_config(root: Path, digits, gates: str, name: str = "edgekit.yaml") -> Path:
    path = root / name
    path.write_text(CONFIG.format(model=digits.model, calib=digits.calib, test=digits.test, gates=gates))
    return path


@pytest.fixture(scope="module")
def first(tmp_path_factory, digits, edgekit):
    """One generous run from an empty cache: (root, its CompletedProcess)."""
    root = tmp_path_factory.mktemp("run")
    config = write_config(root, digits, GENEROUS)
    proc = edgekit(
        "run", config, "-o", root / "results", "--cache", root / "cache", "--junit", root / "gate.xml"
    )
    return root, proc


def verdict(root: Path, results: str = "results") -> dict:
    return json.loads((root / results / "verdict.json").read_text())


def test_generous_gate_passes(first):
    from junitparser import JUnitXml

    root, proc = first
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v = verdict(root)
    assert v["passed"] and {s["status"] for s in v["stages"]} == {"built"}
    metrics = [g["metric"] for g in v["gates"]]
    assert metrics == [
        "max_accuracy_drop",
        "min_accuracy",
        "max_latency_ms.p50",
        "max_latency_ms.p99",
        "min_speedup",
        "max_size_mb",
        "max_peak_memory_mb",
    ]
    assert all(g["status"] == "pass" and g["margin"] > 0 for g in v["gates"])
    cases = [case for suite in JUnitXml.fromfile(str(root / "gate.xml")) for case in suite]
    assert len(cases) == len(metrics) and all(case.is_passed for case in cases)
    records = [json.loads(line) for line in (root / "results" / "results.jsonl").read_text().splitlines()]
    assert [(r["target"], r["variant"]) for r in records] == [("cpu", "fp32"), ("cpu", "int8")]
    assert len(records[1]["latency"]["round_medians_ms"]) == 3 and "top1" in records[1]["accuracy"]


def test_strict_gate_fails_and_names_the_gate(first, digits, edgekit):
    from junitparser import Failure, JUnitXml

    root, _ = first
    config = write_config(root, digits, STRICT, "strict.yaml")
    junit = root / "strict.xml"
    proc = edgekit("gate", root / "results", "--config", config, "--junit", junit, "--json", root / "v.json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "failed: cpu/int8 max_latency_ms.p50, cpu/int8 max_size_mb" in proc.stdout
    cases = {case.name: case for suite in JUnitXml.fromfile(str(junit)) for case in suite}
    assert set(cases) == {"max_accuracy_drop", "max_size_mb", "max_latency_ms.p50"}
    assert cases["max_accuracy_drop"].is_passed
    for name in ("max_size_mb", "max_latency_ms.p50"):
        assert isinstance(cases[name].result[0], Failure), name
    assert json.loads((root / "v.json").read_text())["passed"] is False


def test_second_run_is_cached_with_the_same_verdict(first, edgekit):
    root, _ = first
    manifests = sorted((root / "cache").glob("*/edgekit.json"))
    before = {p: p.stat().st_mtime_ns for p in manifests}
    proc = edgekit("run", root / "edgekit.yaml", "-o", root / "results2", "--cache", root / "cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    v = verdict(root, "results2")
    assert [s["status"] for s in v["stages"]] == ["cached", "cached"]
    assert "fp32 · compress: cached" in proc.stdout and "int8 · compress: cached" in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in manifests} == before
    assert [(g["name"], g["passed"]) for g in v["gates"]] == [
        (g["name"], g["passed"]) for g in verdict(root)["gates"]
    ]


def test_corrupt_cache_entry_is_rebuilt(first, edgekit):
    root, _ = first
    fp32 = next(s for s in verdict(root)["stages"] if s["variant"] == "fp32")
    model = Path(fp32["artifact"]) / "model.onnx"
    model.write_bytes(model.read_bytes()[:-16] + b"\0" * 16)
    proc = edgekit("run", root / "edgekit.yaml", "-o", root / "results3", "--cache", root / "cache")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statuses = {s["variant"]: s["status"] for s in verdict(root, "results3")["stages"]}
    assert statuses == {"fp32": "rebuilt (cache entry corrupt)", "int8": "cached"}
    from edgekit.artifact import read_manifest, verify_files

    verify_files(model.parent, read_manifest(model.parent))


def test_step_summary_and_regression_gate(first, digits, edgekit):
    """max_latency_regression against a saved release: the same results pass a generous bound,
    and the Markdown verdict is appended to $GITHUB_STEP_SUMMARY."""
    root, _ = first
    gates = textwrap.dedent(
        """\
          - target: cpu
            variant: int8
            max_latency_regression: 10000
        """
    )
    config = write_config(root, digits, textwrap.indent(gates, "  "), "regress.yaml")
    summary = root / "summary.md"
    proc = edgekit(
        "gate", root / "results", "--config", config, "--baseline", root / "results",
        env=edgekit.env(GITHUB_STEP_SUMMARY=str(summary)),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| cpu/int8 max_latency_regression |" in summary.read_text()
    missing = edgekit("gate", root / "results", "--config", config)
    assert missing.returncode == 2 and "--baseline" in missing.stderr


def test_report_reads_run_results(first, edgekit):
    root, _ = first
    r = edgekit("report", root / "results", "--format", "csv", "-o", root / "report")
    assert r.returncode == 0, r.stderr
    rows = (root / "report" / "report.csv").read_text().splitlines()[1:]
    assert [row.split(",")[0] for row in rows] == [
        str(root / "cache" / s["key"]) for s in verdict(root)["stages"]
    ]
