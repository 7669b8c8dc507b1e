"""Gate decisions on hand-made records: thresholds, margins, the confidence interval of latency
gates (pass, fail, inconclusive and how it counts), accuracy drop modes, failed measurements, and
the JUnit XML and Markdown views."""

from __future__ import annotations

from edgekit.benchmarks.gate import evaluate, junit, markdown
from edgekit.config import Gate


def record(variant: str, rounds: list[float], top1: float = 0.98, size: int = 2_000_000) -> dict:
    return {
        "artifact": f"/cache/{variant}",
        "runtime": "ort",
        "ok": True,
        "target": "cpu",
        "variant": variant,
        "size_bytes": size,
        "memory_mb": {"peak_rss": 120.0},
        "accuracy": {"top1": top1, "samples": 360},
        "latency": {
            "median_ms": sorted(rounds)[len(rounds) // 2],
            "round_medians_ms": rounds,
            "round_p90_ms": [r * 1.2 for r in rounds],
            "round_p99_ms": [r * 1.5 for r in rounds],
        },
    }


FP32 = record("fp32", [1.00, 1.02, 0.98, 1.01, 0.99])
INT8 = record("int8", [0.50, 0.52, 0.49, 0.51, 0.50], top1=0.97, size=600_000)


def one(records=(FP32, INT8), saved=None, **gate):
    gate = Gate(target="cpu", variant="int8", **gate)
    (result,) = evaluate([gate], list(records), saved)
    return result


def test_thresholds_and_margins():
    r = one(max_size_mb=1.0)
    assert (r.status, r.passed, r.measured, r.unit) == ("pass", True, 0.6, "MB")
    assert abs(r.margin - 0.4) < 1e-9
    r = one(max_peak_memory_mb=100)
    assert (r.status, r.margin) == ("fail", -20.0)
    assert one(min_accuracy=96.5).passed and not one(min_accuracy=97.5).passed


def test_accuracy_drop_points_and_relative():
    r = one(baseline="fp32", max_accuracy_drop=1.5)
    assert r.passed and abs(r.measured - 1.0) < 1e-9 and r.unit == "points"
    r = one(baseline="fp32", max_accuracy_drop=1.0, accuracy_drop_mode="relative")
    assert abs(r.measured - 100 / 98) < 1e-9 and r.status == "fail" and r.unit == "%"


def test_speedup_is_decided_on_the_interval_of_per_round_ratios():
    assert one(baseline="fp32", min_speedup=1.5).status == "pass"
    assert one(baseline="fp32", min_speedup=2.5).status == "fail"
    r = one(baseline="fp32", min_speedup=1.99)  # per-round ratios straddle 1.99
    lo, hi = r.interval
    assert lo < 1.99 < hi and r.status == "inconclusive" and not r.passed
    assert one(baseline="fp32", min_speedup=1.99, inconclusive="pass").passed


def test_latency_percentile_gates():
    assert one(max_latency_ms={"p50": 0.6}).status == "pass"
    assert one(max_latency_ms={"p50": 0.4}).status == "fail"
    r = one(max_latency_ms={"p99": 0.75})  # p99 per round 0.735 … 0.78
    assert r.metric == "max_latency_ms.p99" and r.status == "inconclusive"


def test_regression_against_a_saved_release():
    old = [record("int8", [0.40, 0.41, 0.40, 0.39, 0.40])]
    r = one(max_latency_regression=5, saved=old)
    assert r.status == "fail" and r.measured > 20
    assert one(max_latency_regression=40, saved=old).status == "pass"


def test_a_failed_measurement_fails_every_check_with_its_reason():
    broken = {**INT8, "ok": False, "error": "worker died (exit -9): killed"}
    r = one(records=(FP32, broken), baseline="fp32", min_speedup=1.0)
    assert (r.status, r.measured) == ("fail", None) and "worker died" in r.detail


def test_junit_and_markdown(tmp_path):
    from junitparser import Failure, JUnitXml

    gates = [Gate(target="cpu", variant="int8", baseline="fp32", min_speedup=1.5, max_size_mb=0.5)]
    results = evaluate(gates, [FP32, INT8])
    path = tmp_path / "gate.xml"
    path.write_text(junit(results))
    suite = next(iter(JUnitXml.fromfile(str(path))))
    cases = {c.name: c for c in suite}
    assert set(cases) == {"min_speedup", "max_size_mb"} and suite.failures == 1
    assert cases["min_speedup"].is_passed and isinstance(cases["max_size_mb"].result[0], Failure)
    assert cases["max_size_mb"].classname == "cpu.int8"
    md = markdown(results)
    assert (
        "edgekit gate: FAILED" in md
        and "| cpu/int8 max_size_mb | 0.6 MB | 0.5 MB | -0.1 MB | ❌ fail |" in md
    )


def _probabilities(variant: str, fidelity: dict) -> dict:
    """A record without labels: fidelity to fp32 only, its first output a speech probability."""
    first = {"kind": "other", "sqnr_db": 45.0, "cosine": 1.0, "max_abs_diff": 0.04, "name": "output"}
    return {
        **record(variant, FP32["latency"]["round_medians_ms"]),
        "accuracy": {"fidelity": {"output_0": first | fidelity}},
    }


def test_accuracy_drop_of_independent_probabilities_is_their_decisions_iou():
    """Silero VAD's speech probability ([N, 1], kind other) has no top-1: the drop is in the IoU of
    the decisions above 0.5 (it had been "no accuracy ... no fp32 variant", with an fp32 variant)."""
    base, int8 = (
        _probabilities("fp32", {"decisions_iou": 1.0}),
        _probabilities("int8", {"decisions_iou": 0.995}),
    )
    r = one(records=(base, int8), baseline="fp32", max_accuracy_drop=1.0)
    assert r.passed and abs(r.measured - 0.5) < 1e-9 and "decisions IoU" in r.detail
    assert not one(records=(base, int8), baseline="fp32", max_accuracy_drop=0.4).passed


def test_accuracy_drop_of_an_output_with_sqnr_only_says_why_it_has_none():
    base, int8 = _probabilities("fp32", {}), _probabilities("int8", {})
    r = one(records=(base, int8), baseline="fp32", max_accuracy_drop=1.0)
    assert r.status == "fail" and r.measured is None
    assert "first output (output) is judged as other" in r.detail and "no fp32 variant" not in r.detail
