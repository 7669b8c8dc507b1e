"""Numbers from outputs and timings. numpy only: the worker imports this on any device."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


def latency_stats(seconds: list[float], batch: int) -> dict:
    """Latency distribution in milliseconds, and throughput in samples per second."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    return {
        "count": int(ms.size),
        "median_ms": median,
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cv": float(ms.std() / ms.mean()) if ms.mean() else 0.0,
        "throughput_per_s": batch * 1e3 / median if median else 0.0,
    }


def interleaved_medians(
    runners: dict[str, Callable[[], object]], rounds: int, runs: int, warmup: int = 5
) -> dict[str, list[float]]:
    """Median latency (ms) of each in-process runner per round, the runners alternating within
    each round (A B C A B C ...) so machine noise hits them alike; WARMUP untimed calls first."""
    medians: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            medians[name].append(float(np.median(times)) * 1e3)
    return medians


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 20·log10(‖ref‖/‖ref−out‖); inf when identical."""
    ref = np.asarray(ref, np.float64).ravel()
    noise = np.linalg.norm(ref - np.asarray(out, np.float64).ravel())
    if noise == 0:
        return float("inf")
    return float(20 * np.log10(max(np.linalg.norm(ref), 1e-30) / noise))


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(out, np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def max_abs_diff(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(ref, np.float64) - np.asarray(out, np.float64))))


def compare_outputs(ref: np.ndarray, out: np.ndarray) -> dict:
    """Fidelity of one output to its reference; top-1 agreement when it looks like scores."""
    result = {
        "sqnr_db": sqnr_db(ref, out),
        "cosine": cosine(ref, out),
        "max_abs_diff": max_abs_diff(ref, out),
    }
    if ref.ndim == 2 and ref.shape[1] > 1:
        result["top1_agreement"] = float(np.mean(ref.argmax(1) == out.argmax(1)))
    return result


def accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy of class scores (N, classes) against integer labels."""
    topk = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def fidelity(ref: list[np.ndarray], out: list[np.ndarray]) -> dict:
    """Fidelity of a model's outputs to its parent's, per output; plus agreement where the parent
    was confident, because INT8 errors concentrate on low-confidence inputs."""
    result = {f"output_{i}": compare_outputs(r, o) for i, (r, o) in enumerate(zip(ref, out, strict=True))}
    r, o = ref[0], out[0]
    if r.ndim == 2 and r.shape[1] > 1:
        p = np.exp(r - r.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        confident = p.max(1) >= 0.9
        if confident.any():
            result["top1_agreement_confident"] = float(
                np.mean(r[confident].argmax(1) == o[confident].argmax(1))
            )
            result["confident_fraction"] = float(confident.mean())
    return result
