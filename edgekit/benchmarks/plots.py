"""PNG plots of result records with matplotlib (the `plots` extra), imported only when asked for.

Figures are drawn with matplotlib's object API on the Agg canvas, never pyplot, so plotting needs
no display and leaves no global state behind.
"""

from __future__ import annotations

from pathlib import Path

from edgekit.benchmarks.rows import row_label
from edgekit.errors import EdgekitError


def _figure(width: float, height: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise EdgekitError("--plot needs matplotlib: pip install 'edgekit[plots]'.") from None
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _agreement(r: dict) -> float | None:
    out = (r.get("accuracy") or {}).get("fidelity", {}).get("output_0", {})
    return out.get("top1_agreement")


def pareto_front(points: list[tuple[float, float]]) -> list[bool]:
    """For (latency, accuracy) points: True where no other point is at least as fast and at least
    as accurate while strictly better in one of the two (lower latency, higher accuracy win)."""

    def dominated(p: tuple[float, float]) -> bool:
        return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)

    return [not dominated(p) for p in points]


def latency_accuracy(records: list[dict], path: Path) -> list[dict]:
    """Median latency against top-1 accuracy (or, when no row has labels, top-1 agreement with the
    fp32 reference), the Pareto front joined and ringed. Rows without that number (failed, no
    --eval) cannot be placed: they are returned, not drawn."""
    ok = [r for r in records if r.get("ok")]
    labelled = any("top1" in (r.get("accuracy") or {}) for r in ok)
    metric, value = (
        ("top-1 accuracy", lambda r: (r.get("accuracy") or {}).get("top1"))
        if labelled
        else ("top-1 agreement with fp32", _agreement)
    )
    placed = [r for r in ok if value(r) is not None]
    left_out = [r for r in records if r not in placed]
    if not placed:
        return left_out
    points = [(r["latency"]["median_ms"], 100 * value(r)) for r in placed]
    front = sorted(p for p, on in zip(points, pareto_front(points), strict=True) if on)
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    ax.scatter(*zip(*points, strict=True), color="#4060a0", zorder=2)
    ax.plot(
        *zip(*front, strict=True), "o-", color="#c03030", mfc="none", ms=12, label="Pareto front", zorder=3
    )
    for r, (x, y) in zip(placed, points, strict=True):
        ax.annotate(row_label(r), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    samples = sorted({r["accuracy"]["samples"] for r in placed})
    ax.set_xlabel("median latency (ms)")
    ax.set_ylabel(f"{metric} (%), n={', '.join(map(str, samples))}")
    ax.set_title("latency vs accuracy (lower right is worse)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    return left_out


def latency_distribution(records: list[dict], path: Path) -> bool:
    """One box-like bar per measured row from its stored percentiles (raw times are not kept):
    a line from min to max, a box from median to p90, a tick at the median and a cross at p99.
    False when no row has a latency to draw."""
    rows = [r for r in records if r.get("ok")]
    if not rows:
        return False
    fig = _figure(7, 1.2 + 0.45 * len(rows))
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        lat = r["latency"]
        ax.hlines(i, lat["min_ms"], lat["max_ms"], color="#555", lw=1)
        ax.barh(i, lat["p90_ms"] - lat["median_ms"], left=lat["median_ms"], height=0.5, color="#9db4e0")
        ax.vlines(lat["median_ms"], i - 0.25, i + 0.25, color="#203060", lw=2)
        ax.plot(lat["p99_ms"], i, "x", color="#c03030")
    ax.set_yticks(range(len(rows)), [row_label(r) for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms): line min–max, box median–p90, × p99")
    ax.set_title("latency distribution per row")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return True


def search_front(summary: dict, path: Path) -> None:
    """An `edgekit search` (its search.json): accuracy loss against median latency on the target
    (or model size, where nothing was timed), every scored candidate drawn, the front ringed."""
    rows = [r for r in summary["candidates"] if r["status"] == "ok"]
    timed = [r for r in rows if "median_ms" in (r.get("latency") or {})]
    x_of, x_label = (
        (lambda r: r["latency"]["median_ms"], f"median latency on {summary['target']} (ms)")
        if timed
        else (lambda r: r["size_mb"], "model size (MB)")
    )
    placed = timed or rows
    fig = _figure(7, 4.5)
    ax = fig.add_subplot()
    ax.scatter([x_of(r) for r in placed], [r["accuracy_loss"] for r in placed], color="#4060a0", zorder=2)
    front = sorted((x_of(r), r["accuracy_loss"]) for r in placed if r["on_front"])
    if front:
        ax.plot(*zip(*front, strict=True), "o-", color="#c03030", mfc="none", ms=12, label="Pareto front")
        ax.legend(loc="upper right")
    for r in placed:
        ax.annotate(
            r["name"], (x_of(r), r["accuracy_loss"]), textcoords="offset points", xytext=(6, 4), fontsize=8
        )
    ax.set_xlabel(x_label)
    ax.set_ylabel(rows[0]["accuracy_metric"] if rows else "accuracy loss")
    ax.set_title(f"edgekit search: {len(rows)} candidates, {len(front)} on the front (lower left is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
