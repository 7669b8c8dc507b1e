"""Per-layer INT8 sensitivity: what each quantized layer costs, measured, not guessed.

Sensitivity is the gain when one layer alone is restored to fp32 in the otherwise full INT8 model
(not the loss when it alone is quantized): the search that uses it starts from full INT8 and adds
fp32 layers, so this is the very step it takes, with every other layer's error already present.
Every trial is written from one calibration (edgekit.compress.quantize.calibrated): the ranges do
not depend on which layers are kept.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.benchmarks.metrics import main_number
from edgekit.compress.macs import macs
from edgekit.compress.quantize import COMPUTE_OPS, Int8Config, Prepared, Write, calibrated
from edgekit.data import Samples
from edgekit.errors import EdgekitError

# a model file and the evaluation samples to judge it on (indices; None: all) -> its quality
Evaluate = Callable[[Path, np.ndarray | None], dict]
Judge = Callable[[list[np.ndarray], list[np.ndarray], Samples], dict]  # fp32, model, samples -> quality
# layer names, evaluation indices, the calibration to write them from (WRITE.prepared()) -> each
# layer's trial: restore_each here, or on Ray (edgekit.layer_trials)
RestoreEach = Callable[[list[str], np.ndarray | None, Prepared], dict[str, "Trial"]]
# the evaluation samples the mixed-precision search ranks layers on (edgekit.compress.mixed): one
# sample is 0.8 points, and restoring the layer that matters gains many; the finalists are then
# scored on all of them
SUBSET = 128


@dataclass
class Trial:
    """One INT8 model with some layers kept in fp32, and how it scored (its file: None where it was
    scored on another machine)."""

    kept: tuple[str, ...]
    path: Path | None
    quality: dict
    drop: float = field(init=False)
    sqnr_db: float = field(init=False)

    def __post_init__(self) -> None:
        self.drop = drop_points(self.quality)
        self.sqnr_db = self.quality["fidelity"]["output_0"]["sqnr_db"]


def drop_points(q: dict) -> float:
    """The budgeted number: points of top-1 lost with labels, else points of the first output's
    main fidelity to the fp32 model lost (top-1 agreement, mean cosine, mask IoU, the decisions IoU
    of independent probabilities: benchmarks.metrics.main_number), as gates and search count them."""
    if "drop_points" in q:
        return q["drop_points"]
    first = q["fidelity"]["output_0"]
    main = main_number(first)
    if main is None:
        name = f" '{first['name']}'" if first.get("name") else ""
        raise EdgekitError(
            "per-layer sensitivity and an accuracy budget count points of top-1 (with labels) or of "
            "the first output's fidelity to fp32 (top-1 agreement, mean cosine, mask IoU, ...), and "
            f"this one's first output{name} is {first.get('kind', 'other')}, judged by SQNR alone; its "
            "fidelity floors (--min-fidelity) judge it instead, or give its kind with --output-kind."
        )
    return 100 * (1 - first[main[0]])


def check_budgeted(ref: list[np.ndarray], evals: Samples, judge: Judge) -> None:
    """Refuse, before any calibration, a model whose drop cannot be counted (`drop_points`): the
    fp32 outputs REF judged against themselves say what its first output is."""
    drop_points(judge(ref, ref, evals))


def quantized_layers(int8: Path) -> list[tuple[str, str]]:
    """(node name, op type) of the compute ops that run quantized in a QDQ model."""
    import onnx

    graph = onnx.load(str(int8), load_external_data=False).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    return [
        (n.name, n.op_type)
        for n in graph.node
        if n.op_type in COMPUTE_OPS
        and len(n.input) > 1
        and all(producers.get(i) == "DequantizeLinear" for i in n.input[:2])
    ]


def scorer(ref: list[np.ndarray], evals: Samples, fixed: int | None, judge: Judge) -> Evaluate:
    """EVALUATE for models of the fp32 model whose outputs on EVALS are REF: JUDGE on the samples
    asked for, their fp32 outputs the same rows of REF."""
    from edgekit.evaluate import predict

    def evaluate(path: Path, idx: np.ndarray | None = None) -> dict:
        samples = evals if idx is None else evals.take(idx)
        want = ref if idx is None else [r[idx] for r in ref]
        return judge(want, predict(path, samples, fixed, "evaluating a candidate"), samples)

    return evaluate


def subset(n: int, size: int = SUBSET) -> np.ndarray | None:
    """SIZE evenly spaced indices of N evaluation samples, or None (all) where N <= SIZE: the same
    every run, and spread over the data even where a folder lists it class by class."""
    return None if n <= size else np.linspace(0, n - 1, size).round().astype(int)


def quantize(write: Write, work: Path, kept: tuple[str, ...], evaluate: Evaluate, idx=None) -> Trial:
    """The INT8 model (from WRITE's calibration) with the KEPT nodes left in fp32, scored on the
    evaluation samples IDX (None: all)."""
    path = work / f"int8-{len(list(work.glob('int8-*.onnx')))}.onnx"
    write(path, kept)
    return Trial(kept, path, evaluate(path, idx))


def restore_each(
    write: Write, work: Path, evaluate: Evaluate, full: Trial, idx=None, layers: list[str] | None = None
) -> dict[str, Trial]:
    """For every quantized layer (or those of LAYERS), the full INT8 model with that layer alone
    back in fp32, scored on the evaluation samples IDX (None: all). Each model is written while the
    one before is scored: the write is mostly Python, the scoring ONNX Runtime's own threads."""
    from concurrent.futures import ThreadPoolExecutor

    names = layers if layers is not None else [name for name, _ in quantized_layers(full.path)]
    first = len(list(work.glob("int8-*.onnx")))
    paths = {name: work / f"int8-{first + i}.onnx" for i, name in enumerate(names)}
    pool = ThreadPoolExecutor(1)
    try:
        written = {name: pool.submit(write, paths[name], (name,)) for name in names}
        trials = {}
        for name in names:
            written[name].result()
            trials[name] = Trial((name,), paths[name], evaluate(paths[name], idx))
        return trials
    finally:
        pool.shutdown(cancel_futures=True)


def rank(full: Trial, singles: dict[str, Trial]) -> list[str]:
    """Layers by the points restoring them gains, SQNR gain breaking ties (small evaluation sets
    make many point gains equal)."""
    return sorted(singles, key=lambda n: (full.drop - singles[n].drop, singles[n].sqnr_db), reverse=True)


def latency_shares(
    fp32: Path, feeds: dict[str, np.ndarray], threads: int, runs: int = 20
) -> dict[str, float]:
    """Each node's share of the fp32 model's kernel time, from ONNX Runtime's profiler, with basic
    graph optimizations only: fusions and the NCHWc layout rename nodes, so the time of a fused
    Conv+Relu could not be told apart by the node names the table shows."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgekit-prof-") as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_profiling = True
        so.profile_file_prefix = f"{tmp}/prof"
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        sess = ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    totals: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = e["name"].removesuffix("_kernel_time")
            totals[node] = totals.get(node, 0.0) + e["dur"]
    whole = sum(totals.values()) or 1.0
    return {k: v / whole for k, v in totals.items()}


def table(
    fp32: Path,
    work: Path,
    calib: Samples,
    evals: Samples,
    cfg: Int8Config,
    fixed,
    evaluate,
    restore: RestoreEach | None = None,
    kinds: dict | None = None,
) -> dict:
    """`edgekit sensitivity`: every quantized layer with its op, MACs, sensitivity and fp32
    latency share, most sensitive first; and the full INT8 model's own drop. RESTORE: the trials
    on Ray (None: here). KINDS: the output kinds the user declared."""
    with calibrated(fp32, calib, cfg, fixed, kinds=kinds) as write:
        full = quantize(write, work, (), evaluate)
        if restore is None:
            singles = restore_each(write, work, evaluate, full)
        else:
            layers = [name for name, _ in quantized_layers(full.path)]
            singles = restore(layers, None, write.prepared())
    ops = dict(quantized_layers(full.path))
    feeds, _ = next(batching.batches(evals.inputs, fixed, 1))  # one sample, or one fixed batch
    counts, shares = macs(fp32), latency_shares(fp32, feeds, threads=0)
    rows = [
        {
            "node": n,
            "op_type": ops[n],
            "macs": counts.get(n),
            "sensitivity_points": full.drop - singles[n].drop,
            "drop_points_when_restored": singles[n].drop,
            "sqnr_db_when_restored": singles[n].sqnr_db,
            "latency_share": shares.get(n),
        }
        for n in rank(full, singles)
    ]
    return {
        "metric": full.quality["metric"],
        "full_int8": {"drop_points": full.drop, "sqnr_db": full.sqnr_db},
        "sensitivity": "points of the budgeted metric gained when the layer alone is restored to fp32",
        "layers": rows,
    }


def print_table(result: dict, title: str) -> None:
    """The per-layer table, most sensitive first, as `edgekit sensitivity` prints it."""
    from rich.console import Console
    from rich.table import Table

    full = result["full_int8"]
    t = Table(title=title, title_justify="left")
    for col in ("layer", "op", "MMACs", "sensitivity (points)", "SQNR restored dB", "fp32 latency share"):
        t.add_column(col, justify="left" if col in ("layer", "op") else "right")
    for r in result["layers"]:
        share = "—" if r["latency_share"] is None else f"{100 * r['latency_share']:.1f} %"
        t.add_row(
            r["node"],
            r["op_type"],
            "—" if r["macs"] is None else f"{r['macs'] / 1e6:.2f}",
            f"{r['sensitivity_points']:.2f}",
            f"{r['sqnr_db_when_restored']:.1f}",
            share,
        )
    t.caption = (
        f"full INT8: drop {full['drop_points']:.2f} points, SQNR {full['sqnr_db']:.1f} dB "
        f"({result['metric']}); "
        "sensitivity: points gained when that layer alone is restored to fp32"
    )
    Console().print(t)


def plot(result: dict, path: Path) -> None:
    """A bar chart of the sensitivity per layer, most sensitive first (PNG, Agg canvas)."""
    from edgekit.benchmarks.plots import _figure

    rows = result["layers"]
    fig = _figure(max(6.0, 0.5 * len(rows)), 4.0)
    ax = fig.add_subplot()
    ax.bar(range(len(rows)), [r["sensitivity_points"] for r in rows], color="tab:red")
    ax.set_xticks(range(len(rows)), [r["node"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("points gained when restored to fp32")
    ax.set_title(
        f"INT8 sensitivity per layer (full INT8 drop {result['full_int8']['drop_points']:.2f} points)"
    )
    fig.tight_layout()
    fig.savefig(str(path))
