"""Prediction over samples, and the quality of outputs against a reference: the numbers the
manifest's verification, bench rows and gates read. Imports no other stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np

from edgekit import task_metric
from edgekit.benchmarks.metrics import accuracy, fidelity
from edgekit.data import Samples, check_labels, valid_positions
from edgekit.errors import EdgekitError
from edgekit.memory import run_batch
from edgekit.runtimes import ort


class Quality(TypedDict, total=False):
    """Outputs measured against labels and/or a reference: a manifest verification entry, a bench
    row's `accuracy`. Which keys are present says what could be measured."""

    metric: str  # what the numbers are: top-1 accuracy, fidelity only, or none
    samples: int
    data: str  # which samples (manifest verification)
    fidelity: dict  # benchmarks.metrics.fidelity against the reference
    reference: str  # the reference artifact (bench rows)
    top1: float
    top5: float
    parent_top1: float  # the reference's own top-1/top-5 and the drop to it (manifest verification)
    parent_top5: float
    drop_points: float
    runtime: str  # where the verified model ran, where not ONNX Runtime (CPU)
    final_vs_unpruned: Quality  # a pruned, then quantized model against the unpruned one
    task: dict  # the user's --metric on the reference and on this model (edgekit.task_metric.against)


@dataclass(frozen=True)
class Reference:
    """fp32 reference outputs on the evaluation inputs: what fidelity rows are measured against,
    with their names, so every variant (the fp32 one too) judges an output by its name alike."""

    artifact: str
    outputs: list[np.ndarray]
    names: list[str] = field(default_factory=list)


def predict(
    path: Path, samples: Samples, fixed: int | None, label: str, options: ort.Options | None = None
) -> list[np.ndarray]:
    """Outputs of the ONNX model at PATH in ONNX Runtime (CPU; OPTIONS, else its defaults) on SAMPLES."""
    return samples.outputs(ort.load(str(path), options=options).run, fixed, label, run_batch(path, 32))


def measure_against(
    parent: Path,
    child: Path,
    evals: Samples,
    fixed: int | None,
    data: str,
    kinds: dict[str, str] | None = None,
    metric: str | None = None,
    out: list[np.ndarray] | None = None,
) -> Quality:
    """Accuracy (with labels) or fidelity of `child` against `parent`, on the evaluation data,
    each output judged by its kind (KINDS: --output-kind, by output name), and by METRIC; OUT:
    the child's outputs where they were computed elsewhere (as another CPU class computes them)."""
    sess = ort.load(str(parent))
    ref = evals.outputs(sess.run, fixed, "evaluating fp32", run_batch(parent, 32))
    if out is None:
        out = predict(child, evals, fixed, "evaluating int8")
    return quality(ref, out, evals, data, sess.output_names, kinds, metric)


def quality(
    ref: list[np.ndarray],
    out: list[np.ndarray],
    evals: Samples,
    data: str,
    names: list[str] | None = None,
    kinds: dict[str, str] | None = None,
    metric: str | None = None,
) -> Quality:
    """Fidelity of OUT to REF on EVALS (each output by its kind: benchmarks.metrics.fidelity), both
    top-1s (and the drop) where EVALS has labels, and the user's METRIC (--metric) on both."""
    _check_kinds(kinds or {}, names, len(ref))
    fid = fidelity(ref, out, names, kinds, valid_positions(evals))
    result = Quality(data=data, samples=len(evals), fidelity=fid)
    if evals.description.get("source") == "random":
        result["data"] = "random inputs: fidelity on noise, not on real data"
    parent_acc, child_acc = score(ref, evals), score(out, evals)
    if "top1" in parent_acc:
        result.update(
            metric="top1 accuracy",
            parent_top1=parent_acc["top1"],
            top1=child_acc["top1"],
            parent_top5=parent_acc["top5"],
            top5=child_acc["top5"],
            drop_points=100 * (parent_acc["top1"] - child_acc["top1"]),
        )
    else:
        result["metric"] = "fidelity (no labels)"
    if metric:
        result["task"] = task_metric.against(metric, ref, out, evals.labels)
        result["metric"] = f"{result['task']['name']} (--metric {metric})"
    return result


def _check_kinds(kinds: dict[str, str], names: list[str] | None, count: int) -> None:
    """Every --output-kind names an output of the model (by name, or output_N)."""
    known = {f"output_{i}" for i in range(count)} | set(names or [])
    unknown = [k for k in kinds if k not in known] if names else []
    if unknown:
        raise EdgekitError(
            f"--output-kind names {unknown[0]!r}, which is no output of the model (its outputs: "
            f"{', '.join(names)})."
        )


def score(
    outputs: list[np.ndarray],
    samples: Samples,
    reference: Reference | None = None,
    metric: str | None = None,
    kinds: dict[str, str] | None = None,
) -> Quality:
    """Task accuracy when the samples have labels, fidelity to the fp32 reference when there is
    one (both when both; each output by its kind: KINDS by output_N, else its values), and the
    user's METRIC; which metric it is, and on how many samples, is always stated."""
    result = Quality(samples=len(samples))
    scores = outputs[0]
    if samples.labels is not None and scores.ndim == 2:
        check_labels(samples, scores)
        result.update(
            metric="top1",
            top1=accuracy(scores, samples.labels, 1),
            top5=accuracy(scores, samples.labels, min(5, scores.shape[1])),
        )
    if reference is not None:
        fid = fidelity(reference.outputs, outputs, reference.names, kinds, valid_positions(samples))
        result.update(fidelity=fid, reference=reference.artifact)
        result.setdefault("metric", "fidelity vs fp32")
    if metric:
        parent = None if reference is None else reference.outputs
        result["task"] = task_metric.against(metric, parent, outputs, samples.labels)
        result["metric"] = f"{result['task']['name']} (--metric {metric})"
    result.setdefault("metric", "none (no labels, no fp32 reference)")
    return result
