"""The Pareto front of scored candidates: those no other candidate beats on every objective."""

from __future__ import annotations


def dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    """A is at least as good as B on every objective (all minimized) and better on one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def front(points: dict[str, tuple[float, ...]]) -> list[str]:
    """The names of POINTS (name: objective values, each minimized) on the front, in POINTS' order;
    two points with equal values are both on it."""
    return [n for n, p in points.items() if not any(dominates(q, p) for m, q in points.items() if m != n)]
