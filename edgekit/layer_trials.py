"""Per-layer INT8 trials on Ray (`edgekit sensitivity --ray-address`, `compress --max-accuracy-drop
... --ray-address`): one actor per CPU of the cluster is handed this process's calibration
(edgekit.compress.quantize.Prepared: the pre-processed model, its ranges, AdaRound levels and range
factors, as bytes) and writes and scores the trials it is handed; nothing is calibrated or solved
again, so every trial's quality equals the in-process one.

What edgekit adds to Ray's ActorPool: the actors are built from the fp32 bytes and the samples, not
paths (no shared filesystem), restart on a lost worker (the trial is retried there), and the trials
come back as edgekit.compress.sensitivity.Trial records without a file, written here only where a
caller needs one.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import numpy as np

from edgekit import cluster
from edgekit.compress.quantize import Int8Config, Prepared, calibrated
from edgekit.compress.sensitivity import Judge, Trial, scorer
from edgekit.data import Samples


class _TrialWorker:
    """A Ray actor: the driver's calibration unpacked once, then one scored trial per call."""

    def __init__(
        self,
        fp32: bytes,
        calib: Samples,
        cfg: Int8Config,
        fixed,
        evals: Samples,
        ref,
        judge: Judge,
        prepared: Prepared,
    ):
        self._tmp = Path(tempfile.mkdtemp(prefix="edgekit-trials-"))
        model = self._tmp / "fp32.onnx"
        model.write_bytes(fp32)
        self._stack = contextlib.ExitStack()
        self._write = self._stack.enter_context(calibrated(model, calib, cfg, fixed, prepared))
        self._evaluate = scorer(ref, evals, fixed, judge)

    def trial(self, kept: tuple[str, ...], idx: np.ndarray | None) -> dict:
        path = self._tmp / "trial.onnx"
        self._write(path, kept)
        return self._evaluate(path, idx)


def restore_each(
    address: str,
    fp32: Path,
    calib: Samples,
    cfg: Int8Config,
    fixed: int | None,
    evals: Samples,
    ref: list[np.ndarray],
    judge: Judge,
    layers: list[str],
    prepared: Prepared,
    idx: np.ndarray | None = None,
) -> dict[str, Trial]:
    """edgekit.compress.sensitivity.restore_each on Ray: for every one of LAYERS, the full INT8 model
    with that layer alone in fp32, scored on the evaluation samples IDX (None: all), written from
    PREPARED: this process's calibration (calibrated's WRITE.prepared(), after its first write)."""
    with cluster.connect(address) as ray:
        from ray.util import ActorPool

        worker = ray.remote(_TrialWorker).options(num_cpus=1, max_restarts=2, max_task_retries=2)
        inputs = (Path(fp32).read_bytes(), calib, cfg, fixed, evals, ref, judge, prepared)
        shared = [ray.put(x) for x in inputs]
        actors = [worker.remote(*shared) for _ in range(min(cluster.cpus(ray), len(layers)))]
        pool = ActorPool(actors)
        qualities = list(pool.map(lambda a, name: a.trial.remote((name,), idx), layers))
    return {name: Trial((name,), None, q) for name, q in zip(layers, qualities, strict=True)}
