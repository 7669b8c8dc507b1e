"""`edgekit compare`: two variants (artifacts, runtimes or precisions) measured interleaved
(A B A B ...), summarised as the per-round latency ratio B/A with a bootstrap confidence interval,
so a claimed speed-up survives a noisy machine (a burst that slows one round slows A and B alike)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.benchmarks.record import record
from edgekit.benchmarks.report import failure
from edgekit.benchmarks.runner import BenchConfig, interleaved
from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class CompareConfig:
    rounds: int = 10
    confidence: float = 0.95
    resamples: int = 10_000
    seed: int = 0

    def __post_init__(self):
        if self.rounds < 3:
            raise EdgekitError(f"--rounds {self.rounds} is too few for an interval; use at least 3.")
        if not 0 < self.confidence < 1:
            raise EdgekitError(f"confidence {self.confidence} must lie between 0 and 1.")


def bootstrap_ci(
    values: list[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median of VALUES: resample with replacement, take each
    resample's median, read the (1−c)/2 and (1+c)/2 quantiles. Seeded, so a report is reproducible."""
    x = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, x.size, size=(resamples, x.size))], axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(medians, [tail, 1 - tail])
    return float(lo), float(hi)


def label(directory: Path, cfg: BenchConfig) -> str:
    """A variant as the user named it: artifact, runtime, and the precision when it is not f32."""
    return f"{directory} · {cfg.runtime}" + ("" if cfg.precision in (None, "f32") else f" {cfg.precision}")


def compare(variants: list[tuple[Path, BenchConfig]], cfg: CompareConfig) -> dict:
    """Measure two variants in `cfg.rounds` interleaved rounds, each in fresh workers, and summarise."""
    rec_a, rec_b = interleaved(variants, cfg.rounds)
    for rec in (rec_a, rec_b):
        if not rec.get("ok") or "round_medians_ms" not in rec["latency"]:
            raise MeasurementFailed(f"{rec['artifact']} on {rec['runtime']} was not measured: {failure(rec)}")
    med_a = rec_a["latency"]["round_medians_ms"]
    med_b = rec_b["latency"]["round_medians_ms"]
    ratios = [mb / ma for ma, mb in zip(med_a, med_b, strict=True)]
    lo, hi = bootstrap_ci(ratios, cfg.confidence, cfg.resamples, cfg.seed)
    (a, bench_a), (b, bench_b) = variants
    return {
        "a": label(a, bench_a),
        "b": label(b, bench_b),
        "variants": [
            {k: rec[k] for k in ("artifact", "runtime", "precision", "device")} for rec in (rec_a, rec_b)
        ],
        "threads": bench_a.threads,
        "rounds": cfg.rounds,
        "seconds_per_round": bench_a.seconds / cfg.rounds,
        "a_median_ms": float(np.median(med_a)),
        "b_median_ms": float(np.median(med_b)),
        "a_round_medians_ms": med_a,
        "b_round_medians_ms": med_b,
        "ratio_b_over_a": {
            "rounds": ratios,
            "median": float(np.median(ratios)),
            "ci_low": lo,
            "ci_high": hi,
            "confidence": cfg.confidence,
        },
        "significant": not lo <= 1.0 <= hi,
        "records": [record(rec_a), record(rec_b)],
    }


class MeasurementFailed(EdgekitError):
    """A worker failed during the comparison (exit 1, like a failed bench row)."""

    exit_code = 1
