"""Accuracy-budgeted mixed precision: INT8 everywhere, except the layers the budget needs in fp32.

The layers are chosen by measurement (FIELD-NOTES trap 8: keeping layers by guess made things
worse): sensitivity of each layer (edgekit.compress.sensitivity), then the fewest, then the
fastest fp32 layers that meet the budget, timed on the target runtime. Where more than TRIALS
layers are quantized, a per-layer noise probe of the full INT8 model picks the TRIALS noisiest for
trials of their own. Kept layers stay fp32, not
fp16: neither ONNX Runtime's nor OpenVINO's CPU path computes fp16 (ORT casts around it).

Fast enough for an EfficientNet (65 layers): every trial is written from one calibration, the
layers are ranked on a fixed subset of the evaluation samples (sensitivity.SUBSET), and only the
finalists (the FINALISTS layers that gained most, then the ranking's longest prefix and, where it
meets the budget, a bisection for a shorter one) are scored on all of them; the one chosen is
among those, so its drop is measured on every sample.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit import batching
from edgekit.benchmarks.metrics import interleaved_medians
from edgekit.compress import sensitivity as sens
from edgekit.compress.quantize import Int8Config, Write, calibrated
from edgekit.data import Samples
from edgekit.errors import EdgekitError

FINALISTS = 4  # the single layers re-scored on every evaluation sample, most sensitive first
# layers given a trial of their own where more are quantized: those the layer probe finds adding the
# most noise (edgekit.compress.layer_probe, one run of two models); EfficientNet-Lite1 has 65
TRIALS = 16


class BudgetNotMet(EdgekitError):
    """No configuration within the search met the accuracy budget; the best one was written."""

    exit_code = 1


class MixedConfig(BaseModel):
    """The budget, in points of top-1 (with labels) or of the first output's main fidelity to fp32
    (without: top-1 agreement, mean cosine, mask IoU, ...; compress.sensitivity.drop_points)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    max_accuracy_drop: float = Field(ge=0)
    max_fp32_layers: int | None = Field(None, ge=1)  # None: a quarter of the quantized layers, at least 1
    runtime: str = "ort"  # where the candidates are timed: the artifact's target
    threads: int = 0  # 0: the runtime's default
    rounds: int = 5
    runs: int = 20  # timed runs per candidate per round


def search(
    fp32: Path,
    out: Path,
    calib: Samples,
    evals: Samples,
    int8: Int8Config,
    cfg: MixedConfig,
    fixed: int | None,
    evaluate: sens.Evaluate,
    work: Path,
    restore: sens.RestoreEach | None = None,
    kinds: dict | None = None,
) -> tuple[dict, sens.Trial]:
    """Write the chosen model to OUT; return the pass summary and the chosen trial. RESTORE: the
    per-layer trials on Ray (None: here). KINDS: the output kinds the user declared."""
    started = time.perf_counter()
    with calibrated(fp32, calib, int8, fixed, kinds=kinds) as write:
        calibration = round(time.perf_counter() - started, 1)
        summary, chosen = _search(write, fp32, out, evals, cfg, fixed, evaluate, work, restore)
    summary["seconds"] = {"calibration": calibration, **summary["seconds"]}
    return summary, chosen


def _search(
    write: Write,
    fp32: Path,
    out: Path,
    evals: Samples,
    cfg: MixedConfig,
    fixed: int | None,
    evaluate: sens.Evaluate,
    work: Path,
    restore: sens.RestoreEach | None = None,
) -> tuple[dict, sens.Trial]:
    """`search` with every trial written by WRITE, from the one calibration; the summary's
    `seconds` says what each stage took (the first model solves AdaRound and the ranges once)."""
    clock, seconds = time.perf_counter(), {}

    def lap(stage: str) -> None:
        nonlocal clock
        seconds[stage] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()

    full = sens.quantize(write, work, (), evaluate)
    lap("first_model")
    budget = cfg.max_accuracy_drop
    if full.drop <= budget:
        shutil.copyfile(full.path, out)
        return {
            "budget_met": True,
            "full_int8_drop_points": full.drop,
            "kept_fp32": [],
            "seconds": seconds,
        }, full
    idx = sens.subset(len(evals))
    ranked_full = full if idx is None else sens.Trial((), full.path, evaluate(full.path, idx))
    layers = [name for name, _ in sens.quantized_layers(full.path)]
    tried_alone = _noisiest(fp32, full.path, evals, fixed, layers)
    if restore is None:
        singles = sens.restore_each(write, work, evaluate, full, idx, tried_alone)
    else:  # scored elsewhere: each file written here only where one is needed (same calibration)
        singles = restore(tried_alone, idx, write.prepared())
    ranked = sens.rank(ranked_full, singles)
    lap("ranking")
    limit = min(len(ranked), cfg.max_fp32_layers or max(1, math.ceil(len(layers) / 4)))

    def here(name: str) -> sens.Trial:
        if singles[name].path is None:
            singles[name] = _here(write, work, singles[name])
        return singles[name]

    def on_all(t: sens.Trial) -> sens.Trial:
        return t if idx is None else sens.Trial(t.kept, t.path, evaluate(t.path, None))

    tried = [on_all(here(n)) for n in ranked[:FINALISTS]]
    if limit > 1 and not any(t.drop <= budget for t in tried):
        tried += _prefixes(lambda k: sens.quantize(write, work, tuple(ranked[:k]), evaluate), limit, budget)
    lap("finalists_and_prefixes")
    feasible = [t for t in tried if t.drop <= budget]
    # full INT8 among them: a configuration that drops more than it is never the best effort
    best_effort = min([full, *tried], key=lambda t: (t.drop, len(t.kept)))
    candidates = feasible or [best_effort]
    feed, _ = next(batching.batches(evals.inputs, fixed, 1))  # one sample, or one fixed batch
    timed = {"fp32": fp32, "int8": full.path, **{",".join(t.kept): t.path for t in candidates}}
    timed.update({n: here(n).path for t in candidates for n in t.kept})
    latency = time_interleaved(timed, feed, cfg)
    lap("timing")
    chosen = min(candidates, key=lambda t: latency[",".join(t.kept)])
    shutil.copyfile(chosen.path, out)
    ms = latency[",".join(chosen.kept)]
    summary = {
        "budget_met": chosen.drop <= budget,
        "full_int8_drop_points": full.drop,
        "drop_points": chosen.drop,
        "kept_fp32": [
            {
                "node": n,
                "sensitivity_points": ranked_full.drop - singles[n].drop,  # on the ranking's samples
                "latency_cost_ms": latency[n] - latency["int8"],  # this layer alone in fp32
            }
            for n in chosen.kept
        ],
        "latency_ms": {"fp32": latency["fp32"], "int8": latency["int8"], "chosen": ms},
        "speedup_vs_fp32": latency["fp32"] / ms,
        "timing": f"{cfg.runtime} in-process, {cfg.rounds} interleaved rounds of {cfg.runs} runs, batch "
        f"{fixed or 1}, threads {cfg.threads or 'default'}",
        "candidates": [
            {"kept_fp32": list(t.kept), "drop_points": t.drop, "latency_ms": latency[",".join(t.kept)]}
            for t in candidates
        ],
        # every configuration scored on all the evaluation samples: the finalists, then the prefixes
        "tried": [{"kept_fp32": list(t.kept), "drop_points": t.drop} for t in tried],
        "layers_quantized": len(layers),
        "layers_searched": len(ranked),
        "ranked_on_samples": len(evals) if idx is None else len(idx),
        "max_fp32_layers": limit,
        "seconds": seconds,
    }
    return summary, chosen


def _prefixes(trial, limit: int, budget: float) -> list[sens.Trial]:
    """The ranking's prefixes tried, by TRIAL(k) (the K most sensitive layers in fp32): the longest
    (LIMIT) first, and only where it meets BUDGET a bisection for a shorter one that does (the drop
    falls as layers are restored, if not strictly, so the one found meets the budget but a shorter
    one might too). Where even the longest misses, no shorter one is scored: each is a write and an
    evaluation (about 4 s on EfficientNet-Lite1, bench/mixed_speed.py), and trying all 15 there
    ended in the same miss."""
    longest = trial(limit)
    tried, lo, hi = [longest], 1, limit
    while longest.drop <= budget and hi - lo > 1:
        mid = (lo + hi) // 2
        tried.append(trial(mid))
        lo, hi = (lo, mid) if tried[-1].drop <= budget else (mid, hi)
    return tried


def _here(write: Write, work: Path, t: sens.Trial) -> sens.Trial:
    """T with its model file written here (its quality as scored)."""
    path = work / f"int8-{len(list(work.glob('int8-*.onnx')))}.onnx"
    write(path, t.kept)
    return sens.Trial(t.kept, path, t.quality)


def _noisiest(fp32: Path, int8: Path, evals: Samples, fixed: int | None, layers: list[str]) -> list[str]:
    """LAYERS, or where there are more than TRIALS the TRIALS of them that add the most noise in
    the INT8 model (edgekit.compress.layer_probe on the first evaluation samples)."""
    from edgekit.compress.layer_probe import probe

    if len(layers) <= TRIALS:
        return layers
    added = {x["node"]: x["added"] for x in probe(fp32, int8, evals, fixed)["layers"]}
    return sorted(layers, key=lambda n: added.get(n, 0.0), reverse=True)[:TRIALS]


def time_interleaved(
    models: dict[str, Path], feed: dict[str, np.ndarray], cfg: MixedConfig
) -> dict[str, float]:
    """Median of round medians (ms) per model, in-process sessions timed A B C A B C: candidates
    are many throwaway files, so a fresh worker per candidate and round (the `bench` path) would
    cost seconds each, and only their ratios under the same machine state decide."""
    from edgekit.runtimes import get

    rt = get(cfg.runtime)
    if cfg.runtime not in ("ort", "openvino") or not rt.available():
        raise EdgekitError(
            f"--max-accuracy-drop times candidates in ort or openvino, and --target {cfg.runtime} is "
            "not one of them here; use --target ort or openvino."
        )
    sessions = {k: rt.load(str(p), "cpu", rt.Options(threads=cfg.threads)) for k, p in models.items()}
    runners = {k: (lambda s=s: s.run(feed)) for k, s in sessions.items()}
    medians = interleaved_medians(runners, cfg.rounds, cfg.runs, warmup=3)
    return {k: float(np.median(v)) for k, v in medians.items()}
