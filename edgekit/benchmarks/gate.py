"""`edgekit gate`: result records + the gates of edgekit.yaml -> a verdict per gate (measured value,
threshold, margin, pass/fail/inconclusive), shown as a table and written as JSON, JUnit XML (one
test case per gate) and a Markdown summary.

Latency gates decide on a bootstrap confidence interval over the per-round values of interleaved
rounds, not on one median: an interval that straddles the threshold is "inconclusive".
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.artifact import write_atomic
from edgekit.benchmarks.compare import bootstrap_ci
from edgekit.benchmarks.metrics import main_number
from edgekit.benchmarks.record import gate_names, per_round
from edgekit.benchmarks.report import failure
from edgekit.config import Gate, Target
from edgekit.errors import EdgekitError

NOISY = ("max_latency_ms", "min_speedup", "max_latency_regression")  # decided on an interval


@dataclass
class GateResult:
    target: str
    variant: str
    metric: str  # the gate key, e.g. min_speedup or max_latency_ms.p90
    measured: float | None
    threshold: float
    unit: str
    margin: float | None  # headroom: positive passes, negative fails
    status: str  # pass | fail | inconclusive
    passed: bool  # inconclusive counts as the gate's `inconclusive` setting says
    detail: str
    interval: tuple[float, float] | None = None
    gate: Gate | None = field(default=None, repr=False, compare=False)

    @property
    def name(self) -> str:
        return f"{self.target}/{self.variant} {self.metric}"

    def as_dict(self) -> dict:
        keys = ("target", "variant", "metric", "measured", "threshold", "unit", "margin", "status", "passed")
        return {
            "name": self.name,
            **{k: getattr(self, k) for k in keys},
            "interval": self.interval,
            "detail": self.detail,
        }


def latest(records: list[dict], targets: list[Target] = ()) -> dict[tuple[str, str], dict]:
    """The last record of each (target, variant): `edgekit run`'s names, else record.gate_names,
    where a record of `bench` or `compare` takes the name of the TARGETS entry that measures its
    variant on its runtime, device and host."""
    out = {}
    for r in records:
        target, variant = gate_names(r)
        if "target" not in r:
            target = next((t.name for t in targets if _measures(t, r, variant)), target)
        out[target, variant] = r
    return out


def _measures(t: Target, r: dict, variant: str) -> bool:
    where = (t.runtime, t.device, t.host or "local")
    return variant in t.variants and where == (r["runtime"], r.get("device"), r.get("host_target", "local"))


def evaluate(
    gates: list[Gate], records: list[dict], baseline: list[dict] | None = None, targets: list[Target] = ()
) -> list[GateResult]:
    """Every threshold of every gate against the records (and the saved --baseline records)."""
    runs, saved = latest(records, targets), latest(baseline or [], targets)
    results = []
    for g in gates:
        rec = _record(runs, g.target, g.variant, "the results")
        base = _record(runs, g.target, g.baseline, "the results") if g.baseline else None
        for check in _checks(g, rec, base, saved, baseline is not None):
            results.append(check)
    return results


def _record(runs: dict, target: str, variant: str, where: str) -> dict:
    if (target, variant) not in runs:
        raise EdgekitError(
            f"{where} hold no measurement of variant {variant} on target {target} (they hold "
            f"{', '.join(f'{t}/{v}' for t, v in runs) or 'none'}); measure it with `edgekit run "
            "edgekit.yaml`, or `edgekit bench DIR/VARIANT -o RESULTS` (docs/guide/ci.md)."
        )
    return runs[target, variant]


def _checks(g: Gate, rec: dict, base: dict | None, saved: dict, has_baseline: bool) -> list[GateResult]:
    def result(metric, measured, threshold, unit, upper, detail="", interval=None) -> GateResult:
        if measured is None:
            status, margin = "fail", None
        else:
            margin = threshold - measured if upper else measured - threshold
            lo, hi = interval or (measured, measured)
            bound_ok, bound_bad = (
                (hi <= threshold, lo > threshold) if upper else (lo >= threshold, hi < threshold)
            )
            status = "pass" if bound_ok else "fail" if bound_bad else "inconclusive"
        passed = status == "pass" or (status == "inconclusive" and g.inconclusive == "pass")
        return GateResult(
            g.target,
            g.variant,
            metric,
            measured,
            threshold,
            unit,
            margin,
            status,
            passed,
            detail,
            interval,
            g,
        )

    broken = next((r for r in (rec, base) if r is not None and not r.get("ok")), None)
    out = []
    limits = g.max_latency_ms.model_dump(exclude_none=True) if g.max_latency_ms else {}
    if g.max_accuracy_drop is not None:
        drop, how = _accuracy_drop(rec, base, g.accuracy_drop_mode) if not broken else (None, "")
        unit = "points" if g.accuracy_drop_mode == "points" else "%"
        out.append(result("max_accuracy_drop", drop, g.max_accuracy_drop, unit, True, how))
    if g.min_accuracy is not None:
        top1 = (rec.get("accuracy") or {}).get("top1")
        how = "top-1 on data.evaluation" if top1 is not None else "no top-1: data.evaluation has no labels"
        out.append(
            result("min_accuracy", None if top1 is None else 100 * top1, g.min_accuracy, "%", False, how)
        )
    if g.min_metric is not None:
        task = (rec.get("accuracy") or {}).get("task")
        how = (
            f"{task['name']} (data.metric)" if task else "no task metric: set data.metric and data.evaluation"
        )
        out.append(result("min_metric", task and task["value"], g.min_metric, "", False, how))
    for p, limit in limits.items():
        key = {"p50": "median_ms", "p90": "p90_ms", "p99": "p99_ms"}[p]
        values = None if broken else per_round(rec["latency"], key)
        out.append(_interval(result, f"max_latency_ms.{p}", values, limit, "ms", True, g, f"{p} per round"))
    if g.min_speedup is not None:
        ratios = None
        if not broken:
            ratios = _ratios(per_round(base["latency"], "median_ms"), per_round(rec["latency"], "median_ms"))
        how = f"{g.baseline} median / {g.variant} median, per interleaved round"
        out.append(_interval(result, "min_speedup", ratios, g.min_speedup, "×", False, g, how))
    if g.max_size_mb is not None:
        size = None if broken else rec["size_bytes"] / 1e6
        out.append(result("max_size_mb", size, g.max_size_mb, "MB", True, "model files on disk"))
    if g.max_peak_memory_mb is not None:
        peak = None if broken else rec["memory_mb"]["peak_rss"]
        out.append(
            result("max_peak_memory_mb", peak, g.max_peak_memory_mb, "MiB", True, "peak RSS of the worker")
        )
    if g.max_latency_regression is not None:
        if not has_baseline:
            raise EdgekitError(
                f"the max_latency_regression gate of {g.variant} on {g.target} compares with a saved "
                "release: give --baseline RESULTS_DIR."
            )
        old = _record(saved, g.target, g.variant, "the --baseline results")
        values = None
        if not broken and old.get("ok"):
            values = [
                100 * (m / old["latency"]["median_ms"] - 1) for m in per_round(rec["latency"], "median_ms")
            ]
        how = (
            f"median vs the baseline release's {old['latency']['median_ms']:.3f} ms" if old.get("ok") else ""
        )
        out.append(
            _interval(result, "max_latency_regression", values, g.max_latency_regression, "%", True, g, how)
        )
    if broken:
        for r in out:
            r.detail = f"{Path(broken['artifact']).name} on {broken['runtime']} {failure(broken)}"
    return out


def _ratios(base: list[float], variant: list[float]) -> list[float]:
    """Per-round speed-ups of interleaved rounds; records measured apart (`bench`) give one, of
    their medians."""
    if len(base) != len(variant):
        base, variant = [float(np.median(base))], [float(np.median(variant))]
    return [b / v for b, v in zip(base, variant, strict=True)]


def _interval(result, metric, values, threshold, unit, upper, g: Gate, how: str) -> GateResult:
    """A noisy metric: the median of its per-round values, decided on their bootstrap interval."""
    if not values:
        return result(metric, None, threshold, unit, upper, how)
    lo, hi = bootstrap_ci(values, g.confidence)
    detail = f"{how}; {g.confidence:.0%} interval {lo:.4g}–{hi:.4g} over {len(values)} rounds"
    return result(metric, float(np.median(values)), threshold, unit, upper, detail, (lo, hi))


def _accuracy_drop(rec: dict, base: dict, mode: str) -> tuple[float | None, str]:
    """The drop from the baseline in the user's task metric (data.metric), else in top-1 (with
    labels), else in the main fidelity number of the first output's kind (agreement, cosine, mask
    IoU) against fp32."""
    acc, ref = rec.get("accuracy") or {}, base.get("accuracy") or {}
    if "task" in acc and "task" in ref:
        new, old, what = acc["task"]["value"], ref["task"]["value"], f"{acc['task']['name']} (data.metric)"
        drop = old - new if mode == "points" else 100 * (old - new) / old if old else None
        return drop, f"{what}: {old:.4g} → {new:.4g}"
    if "top1" in acc and "top1" in ref:
        new, old, what = acc["top1"], ref["top1"], "top-1"
    else:
        mains = [_main(a) for a in (acc, ref)]
        if None in mains:
            return None, _no_accuracy(acc)
        (what, new), (_, old) = mains
        what += " with fp32 (no labels)"
    drop = 100 * (old - new) if mode == "points" else 100 * (old - new) / old
    return drop, f"{what}: {100 * old:.2f} % → {100 * new:.2f} %"


def _no_accuracy(accuracy: dict) -> str:
    """Why a variant's drop has no number: no fp32 variant to judge it against, or a first output
    whose kind has no fidelity in points (an `other` output: SQNR only)."""
    first = (accuracy.get("fidelity") or {}).get("output_0")
    if not first:
        return "no accuracy: no labels in data.evaluation, no data.metric, no fp32 variant"
    name = f" ({first['name']})" if "name" in first else ""
    return (
        f"no accuracy: no labels in data.evaluation, no data.metric, and the first output{name} is "
        f"judged as {first.get('kind', 'other')}, which has no fidelity in points (SQNR only); give "
        "it a kind in data.output_kinds, or your task's measure as data.metric"
    )


def _main(accuracy: dict) -> tuple[str, float] | None:
    """The first output's main fidelity number and its name; None where there is none."""
    out = (accuracy.get("fidelity") or {}).get("output_0") or {}
    main = main_number(out)
    return None if main is None else (main[1], out[main[0]])


def failed(results: list[GateResult]) -> list[GateResult]:
    return [r for r in results if not r.passed]


def _num(x: float | None, unit: str) -> str:
    if x is None:
        return "—"
    return f"{x:.4g} {unit}".rstrip() if unit != "×" else f"{x:.3g}×"


def _margin(r: GateResult) -> str:
    return "—" if r.margin is None else f"{r.margin:+.3g} {r.unit}".replace(" ×", "×")


def _result_word(r: GateResult) -> str:
    if r.status == "inconclusive":
        return f"inconclusive ({'counted as pass' if r.passed else 'counted as fail'})"
    return r.status


def print_table(results: list[GateResult], title: str = "edgekit gate") -> None:
    from rich.table import Table

    from edgekit.benchmarks.report import console

    t = Table(title=title, title_justify="left")
    for col in ("gate", "measured", "threshold", "margin", "result", "how"):
        t.add_column(col, justify="right" if col in ("measured", "threshold", "margin") else "left")
    colour = {"pass": "green", "fail": "red", "inconclusive": "yellow"}
    for r in results:
        word = f"[{colour[r.status]}]{_result_word(r)}[/{colour[r.status]}]"
        t.add_row(r.name, _num(r.measured, r.unit), _num(r.threshold, r.unit), _margin(r), word, r.detail)
    console.print(t)
    bad = failed(results)
    summary = f"{len(results) - len(bad)} of {len(results)} gates passed"
    console.print(summary + (f"; failed: {', '.join(r.name for r in bad)}" if bad else ""))


def markdown(results: list[GateResult]) -> str:
    mark = {"pass": "✅ pass", "fail": "❌ fail", "inconclusive": "⚠️ inconclusive"}
    lines = [
        f"### edgekit gate: {'passed' if not failed(results) else 'FAILED'}",
        "",
        "| gate | measured | threshold | margin | result | how |",
        "|---|---:|---:|---:|---|---|",
    ]
    for r in results:
        word = mark[r.status] + ("" if r.status != "inconclusive" else f" ({'pass' if r.passed else 'fail'})")
        cells = (r.name, _num(r.measured, r.unit), _num(r.threshold, r.unit), _margin(r), word, r.detail)
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def junit(results: list[GateResult]) -> str:
    """JUnit XML: one test case per gate (classname target.variant), a <failure> for each failed one."""
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites, "testsuite", name="edgekit gate", tests=str(len(results)), failures=str(len(failed(results)))
    )
    for r in results:
        case = ET.SubElement(suite, "testcase", classname=f"{r.target}.{r.variant}", name=r.metric, time="0")
        text = (
            f"measured {_num(r.measured, r.unit)}, threshold {_num(r.threshold, r.unit)}: {_result_word(r)}"
        )
        if not r.passed:
            ET.SubElement(case, "failure", message=f"{r.name}: {text}", type=r.status).text = r.detail
        else:
            ET.SubElement(case, "system-out").text = f"{text}; {r.detail}"
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def publish(results: list[GateResult], json_path: Path | None, junit_path: Path | None, extra=None) -> None:
    """Print the table; write the JSON verdict and JUnit XML where asked, and append the Markdown to
    $GITHUB_STEP_SUMMARY when it is set (GitHub Actions shows it on the job's page)."""
    print_table(results)
    if json_path:
        verdict = {"passed": not failed(results), "gates": [r.as_dict() for r in results], **(extra or {})}
        write_atomic(Path(json_path), json.dumps(verdict, indent=2) + "\n")
    if junit_path:
        write_atomic(Path(junit_path), junit(results))
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a") as f:
            f.write(markdown(results))
