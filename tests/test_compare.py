"""`edgekit compare`: two real artifacts (a tiny ResNet in fp32 and INT8) measured interleaved, and
the bootstrap interval behind its verdict checked on data whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from artifacts import tiny_pair

from edgekit.benchmarks.compare import CompareConfig, bootstrap_ci
from edgekit.errors import EdgekitError

ROUNDS = 3


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp("compare"))


def test_compare_measures_interleaved_rounds_and_reports_the_ratio(pair, edgekit, tmp_path):
    out = tmp_path / "compare.json"
    r = edgekit("compare", pair.fp32, pair.int8, "--rounds", ROUNDS, "--seconds", 0.6, "--json", out)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    c = json.loads(out.read_text())
    assert (c["a"], c["b"], c["rounds"]) == (f"{pair.fp32} · ort", f"{pair.int8} · ort", ROUNDS)
    assert [v["artifact"] for v in c["variants"]] == [str(pair.fp32), str(pair.int8)]
    a, b = c["a_round_medians_ms"], c["b_round_medians_ms"]
    assert len(a) == len(b) == ROUNDS and min(a + b) > 0
    ratio = c["ratio_b_over_a"]
    assert ratio["rounds"] == pytest.approx([y / x for x, y in zip(a, b, strict=True)])
    assert ratio["median"] == pytest.approx(float(np.median(ratio["rounds"])))
    assert ratio["ci_low"] <= ratio["median"] <= ratio["ci_high"] and ratio["confidence"] == 0.95
    assert c["significant"] == (not ratio["ci_low"] <= 1.0 <= ratio["ci_high"])
    assert c["a_median_ms"] == pytest.approx(float(np.median(a)))
    # Each side's record is a full bench record, from fresh workers.
    assert [rec["ok"] for rec in c["records"]] == [True, True]
    assert "latency ratio B/A" in r.stdout and f"{ROUNDS} interleaved rounds" in r.stdout
    assert ("no significant difference" in r.stdout) == (not c["significant"])


def test_a_side_that_fails_to_measure_exits_1_with_its_reason(pair, edgekit):
    r = edgekit("compare", pair.fp32, pair.int8, "--rounds", 3, "--seconds", 0.3, "--timeout", 0.05)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stderr.startswith("edgekit: error:") and "timed out" in r.stderr
    assert "Traceback" not in r.stderr


def test_compare_one_artifact_on_two_runtimes(pair, edgekit, tmp_path):
    out = tmp_path / "c.json"
    args = ("--runtime", "ort,openvino", "--rounds", ROUNDS, "--seconds", 0.6, "--json", out)
    r = edgekit("compare", pair.fp32, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    c = json.loads(out.read_text())
    assert [(v["artifact"], v["runtime"]) for v in c["variants"]] == [
        (str(pair.fp32), "ort"),
        (str(pair.fp32), "openvino"),
    ]
    assert [rec["runtime"] for rec in c["records"]] == ["ort", "openvino"]
    assert c["records"][1]["runtime_info"]["precision"] == "f32"  # pinned, not OpenVINO's silent bf16
    assert "openvino" in r.stdout and len(c["ratio_b_over_a"]["rounds"]) == ROUNDS


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounds", 2], "too few"),
        (["--seconds", 0], "is not in the range x>0"),
        (["--runtime", "ort,openvino"], "exactly two variants"),  # two artifacts and two runtimes
        (["--runtime", "nope"], "not known"),
    ],
)
def test_bad_compare_options_are_one_sentence(pair, edgekit, args, message):
    r = edgekit("compare", pair.fp32, pair.int8, *args)
    assert r.returncode == 2 and r.stderr.startswith("edgekit: error:") and message in r.stderr
    assert "Traceback" not in r.stderr


def test_one_artifact_one_runtime_is_not_a_comparison(pair, edgekit):
    r = edgekit("compare", pair.fp32, "--rounds", 3)
    assert r.returncode == 2 and "exactly two variants" in r.stderr


def test_missing_artifact_is_one_sentence(pair, edgekit, tmp_path):
    r = edgekit("compare", pair.fp32, tmp_path / "nope", "--rounds", 3, "--seconds", 0.3)
    assert r.returncode == 2 and "not an edgekit artifact" in r.stderr and "Traceback" not in r.stderr


def test_bootstrap_ci_of_constant_ratios_is_that_constant():
    assert bootstrap_ci([1.25] * 8) == (1.25, 1.25)


def test_bootstrap_ci_brackets_the_median_and_narrows_with_more_rounds():
    rng = np.random.default_rng(1)
    few = list(1.2 + 0.1 * rng.standard_normal(8))
    many = list(1.2 + 0.1 * rng.standard_normal(400))
    lo, hi = bootstrap_ci(few)
    assert lo <= np.median(few) <= hi
    lo_m, hi_m = bootstrap_ci(many)
    assert lo_m < 1.2 < hi_m  # the true median of the data's distribution
    assert hi_m - lo_m < hi - lo
    # The median of N(μ, σ) has standard error ≈ 1.2533·σ/√n: a 95 % interval ≈ ±1.96 of it.
    expected = 2 * 1.96 * 1.2533 * 0.1 / np.sqrt(400)
    assert hi_m - lo_m == pytest.approx(expected, rel=0.35)


def test_bootstrap_ci_is_seeded_and_widens_with_confidence():
    data = [0.9, 1.1, 1.3, 0.8, 1.0, 1.2, 1.05]
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)
    lo80, hi80 = bootstrap_ci(data, confidence=0.8)
    lo99, hi99 = bootstrap_ci(data, confidence=0.99)
    assert lo99 <= lo80 <= hi80 <= hi99
    assert lo99 <= 1.0 <= hi99  # ratios on both sides of 1: no significant difference


def test_compare_config_validates_itself():
    with pytest.raises(EdgekitError, match="at least 3"):
        CompareConfig(rounds=1)
    with pytest.raises(EdgekitError, match="between 0 and 1"):
        CompareConfig(confidence=95)
    assert CompareConfig().rounds == 10


def test_interval_from_real_compare_is_reproducible(pair, edgekit, tmp_path):
    """The interval is a pure function of the measured rounds: recomputing it gives the same."""
    out = tmp_path / "c.json"
    r = edgekit("compare", pair.fp32, pair.fp32, "--rounds", ROUNDS, "--seconds", 0.6, "--json", out)
    assert r.returncode == 0, r.stdout + r.stderr
    c = json.loads(Path(out).read_text())
    ratio = c["ratio_b_over_a"]
    assert (ratio["ci_low"], ratio["ci_high"]) == bootstrap_ci(ratio["rounds"])
