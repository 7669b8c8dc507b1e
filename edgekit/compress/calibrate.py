"""Activation ranges for static INT8, and the mean inputs bias correction needs, in one pass over
the calibration data, in runs sized by a memory budget.

edgekit runs ORT's calibration model (every tensor to calibrate made an output) and computes the
ranges with ORT's HistogramCollector, but feeds it itself: `quantize_static` builds the entropy
calibrator with 128 bins for 128 levels (one candidate: "entropy" would silently be MinMax); its
percentile ranges are symmetric unless told (half the u8 range lost after a ReLU); it holds every
batch's activations to the end (GBs at 640x640), and its collector spends 5.5 s a 640x640 sample.
Here each run takes as many samples as the budget fits (edgekit.compress.calib_memory), each tensor
is checked for sentinel values before it reaches a histogram, the histograms (or exact min/max
ranges) merge run by run (edgekit.compress.histograms), tensors are binned on a thread per core,
and the layers' mean inputs are summed from the same runs.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.compress import calib_memory, histograms, sentinels
from edgekit.data import Samples
from edgekit.errors import EdgekitError, first_line
from edgekit.progress import progress


@dataclass(frozen=True)
class Method:
    """How ranges are found: "minmax", "mean_minmax" (the mean over samples of each sample's min
    and max: NNCF's default for activations), "percentile" (PERCENTILE of the values) or
    "entropy", or "mse" (the range of least quantization error over the values' histogram,
    edgekit.compress.histograms.mse_range); over the values' magnitudes where SYMMETRIC (a zero
    point of 0)."""

    name: str
    percentile: float = 99.99
    symmetric: bool = False


@dataclass
class Calibration:
    """CACHE: the ranges as ORT's calibration cache (for `quantize_static`); MEMORY: the budget and
    the runs it allowed; LEFT: tensors left float, with why; MEANS: the mean (over the samples) of
    each tensor asked for."""

    cache: Path
    memory: dict
    left: dict[str, str]
    means: dict[str, np.ndarray]


@dataclass
class _Tensor:
    """One tensor's calibration so far."""

    histogram: histograms.Histogram | None = None
    lo: float = np.inf
    hi: float = -np.inf
    why: str | None = None
    total: np.ndarray | None = None
    sample_extremes: np.ndarray = field(default_factory=lambda: np.zeros(3))  # sum of mins, of maxes; count


def calibrate(
    model: Path,
    calib: Samples,
    method: Method,
    limit: int,
    batch: int,
    fixed: int | None,
    tmp: Path,
    ops: list[str] | None = None,
    means_of: Sequence[str] = (),
    observe: Mapping[str, Callable[[np.ndarray], None]] | None = None,
) -> Calibration:
    """Ranges by METHOD for the tensors ORT calibrates for the op types OPS (None: all) of MODEL,
    over CALIB in runs of at most BATCH samples whose activations fit LIMIT bytes (FIXED: the
    model's fixed batch); the means of the tensors MEANS_OF among them. OBSERVE[name], where given,
    is called with each run's values of that tensor (its real samples; what AdaRound collects).
    Works in TMP."""
    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        HistogramCollector,
        TensorsData,
        create_calibrator,
        save_tensors_data,
    )

    from edgekit.runtimes.ort import cpus, threads

    absolute = method.name in ("percentile", "mse") and method.symmetric  # ORT's layout for this method
    state: dict[str, _Tensor] = {}

    def take(name: str, value: np.ndarray, real: int, rows: int) -> None:
        """Count VALUE (a run's of ROWS samples, REAL of them not padding) into its tensor's calibration."""
        t = state.setdefault(name, _Tensor())
        if name in observers:
            observers[name](value[:real])
        if name in mean_set:
            part = value[:real].sum(0, dtype=np.float32)
            t.total = part if t.total is None else t.total + part
        flat = value.ravel()
        if t.why or flat.size == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        t.why = sentinels.reason(flat, lo, hi)
        if t.why:
            t.histogram = None
            return
        t.lo, t.hi = min(t.lo, lo), max(t.hi, hi)
        if method.name == "mean_minmax":  # per sample where the tensor's first axis is the run's samples
            per = value[:real].reshape(real, -1) if value.ndim and value.shape[0] == rows else flat[None]
            t.sample_extremes += (per.min(1).sum(), per.max(1).sum(), len(per))
        elif method.name in ("percentile", "entropy", "mse"):
            t.histogram = histograms.add(t.histogram, flat, lo, hi, absolute)

    try:
        # ORT's calibration model: every tensor to calibrate is an output
        augmented = create_calibrator(
            model,
            augmented_model_path=str(tmp / "augmented.onnx"),
            op_types_to_calibrate=ops,
            calibrate_method=CalibrationMethod.Percentile,
        )
        task_cpus = threads(0)  # a Ray task's CPUs, where it is one: ORT's session takes every core
        if task_cpus:
            so = ort.SessionOptions()
            so.intra_op_num_threads = task_cpus
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as ORT's own
            path, providers = augmented.augmented_model_path, augmented.execution_providers
            augmented.infer_session = ort.InferenceSession(path, so, providers=providers)
        session, wanted = augmented.infer_session, augmented.tensors_to_calibrate
        names = [o.name for o in session.get_outputs()]
        kept = [(i, name) for i, name in enumerate(names) if name in wanted]
        mean_set = set(means_of) & set(wanted)
        observers = observe or {}
        with ThreadPoolExecutor(cpus()) as pool:

            def feed(samples: Samples, size: int) -> int:
                """Run SAMPLES in runs of SIZE, each run's tensors counted on the pool; the bytes
                of the first run's tensors."""
                held = 0
                for feeds, real in batching.batches(samples.inputs, fixed, size):
                    out = session.run(None, feeds)
                    held = held or sum(out[i].nbytes for i, _ in kept)
                    rows = fixed or real
                    args = (
                        [n for _, n in kept],
                        [out[i] for i, _ in kept],
                        [real] * len(kept),
                        [rows] * len(kept),
                    )
                    list(pool.map(take, *args))
                    del out
                return held

            with progress() as bar:
                task = bar.add_task(f"calibrating ({method.name})", total=len(calib))
                # the first sample alone: what its activations weigh sizes the runs
                per_sample = feed(calib.take(slice(0, 1)), 1) // (fixed or 1)
                bar.advance(task)
                chunk = calib_memory.chunk_samples(per_sample, limit, fixed)
                size = fixed or min(batch, chunk)
                rest = calib.take(slice(1, None))
                for start in range(0, len(rest), size):
                    feed(rest.take(slice(start, start + size)), size)
                    bar.advance(task, min(size, len(rest) - start))
            memory = {"budget_bytes": limit, "bytes_per_sample": per_sample, "samples_per_run": size}
            memory["runs"] = 1 + -(-len(rest) // size)
        ranges = _ranges(state, method, HistogramCollector)
        data = TensorsData(ort_method(method.name), ranges)
    except EdgekitError:
        raise
    except Exception as e:
        raise EdgekitError(f"{method.name} calibration failed: {first_line(e)}") from None
    cache = tmp / "ranges.json"
    save_tensors_data(data, cache)
    consumers = _consumers(model)
    left = {name: sentinels.label(name, t.why, consumers) for name, t in state.items() if t.why}
    count = len(calib)
    means = {name: t.total / count for name, t in state.items() if t.total is not None}
    return Calibration(cache, memory, left, means)


def ort_method(name: str):
    """The ORT CalibrationMethod whose ranges a method NAME makes (mse and mean_minmax make plain
    ranges): what `quantize_static` reads the calibration cache as."""
    from onnxruntime.quantization.calibrate import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "mean_minmax": CalibrationMethod.MinMax,
        "mse": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[name]


def _ranges(state: dict[str, _Tensor], method: Method, collector_type) -> dict:
    """ORT's ranges per tensor from the merged STATE: min/max (overall, or the mean of the samples'),
    the least-error range of its histogram, or ORT's collector's percentile or entropy computed from
    the histograms; tensors with sentinel values have none."""
    found = {n: t for n, t in state.items() if not t.why and t.lo <= t.hi}
    if method.name == "minmax":
        return {n: (np.float32(t.lo), np.float32(t.hi)) for n, t in found.items()}
    if method.name == "mean_minmax":
        return {n: tuple(np.float32(t.sample_extremes[:2] / t.sample_extremes[2])) for n, t in found.items()}
    if method.name == "mse":
        return {n: tuple(np.float32(histograms.mse_range(t.histogram))) for n, t in found.items()}
    collector = collector_type(
        method=method.name,
        symmetric=method.symmetric,
        num_bins=histograms.BINS,
        num_quantized_bins=128,
        percentile=method.percentile,
        scenario="same",
    )
    collector.histogram_dict = {n: histograms.ort_entry(t.histogram) for n, t in state.items() if t.histogram}
    with contextlib.redirect_stdout(io.StringIO()):  # ORT prints to stdout
        return collector.compute_collection_result()


def _consumers(model: Path) -> dict[str, list]:
    """The nodes of MODEL that read each tensor."""
    import onnx

    consumers: dict[str, list] = {}
    for node in onnx.load(str(model), load_external_data=False).graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers
