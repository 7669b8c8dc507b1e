"""Activation histograms merged batch by batch, in the layout from which ONNX Runtime's
HistogramCollector computes its percentile and entropy ranges (`ort_entry`).

What edgekit adds to ORT's collector: speed on large activations. ORT's copies every tensor
(flatten), takes its min and max again and calls np.histogram (about 8 ns a value); a 640x640
detector computes 340 M values a sample, 5.5 s a sample in ORT's collector. Here the min and max
come from the caller (the sentinel check computed them), and values are binned by one
multiply-and-truncate and np.bincount in cache-sized blocks: 1.2 s on one core for the same
sample, min and max included.
The merge is ORT's: the bins keep their width and grow by whole bins when a batch reaches beyond them,
up to MAX_BINS; past that, adjacent bins are summed into wider ones first (ORT's grow without end:
Silero VAD's first sample, a stream's silence, set bins 1e-4 as wide as its speech needed, and 20 M
bins broke its percentile).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

BINS = 2048  # ORT's num_bins for percentile and entropy calibration
BLOCK = 1 << 16  # values binned at once: their float and index copies stay in the core's cache
# a histogram growing past this many bins is coarsened back to about BINS (each bin then still
# BINS-th of the reach or finer, as a histogram started on every value at once would be)
MAX_BINS = 32 * BINS
# values all smaller than this are counted as zeros: bins over so small a reach are denormal in
# float32 and 1 / width overflows (a randomly initialised MobileViT has tensors of 1e-41 at most)
TINY = 1e-30


@dataclass
class Histogram:
    """Counts of a tensor's values in equal bins of WIDTH: over [-n*width/2, n*width/2] (signed),
    or of their magnitudes over [0, n*width] (absolute, ORT's symmetric percentile); the extremes seen."""

    counts: np.ndarray
    width: float
    absolute: bool
    lo: float
    hi: float

    @property
    def start(self) -> float:
        return 0.0 if self.absolute else -self.counts.size * self.width / 2


def bin_counts(values: np.ndarray, start: float, width: float, n: int, absolute: bool) -> np.ndarray:
    """Counts of VALUES (their magnitudes where ABSOLUTE) in N bins of WIDTH from START; values
    beyond either end count in the end bin."""
    counts = np.zeros(n, np.int64)
    size = min(BLOCK, values.size)
    buf, idx = np.empty(size, np.float32), np.empty(size, np.intp)
    scale = 1.0 / width
    for i in range(0, values.size, BLOCK):
        block = values[i : i + BLOCK]
        b, k = buf[: block.size], idx[: block.size]
        if absolute:
            np.abs(block, out=b)
        else:
            np.subtract(block, start, out=b)
        np.multiply(b, scale, out=b)
        np.clip(b, 0, n - 1, out=b)
        k[...] = b  # truncation: the floor of a value >= 0
        counts += np.bincount(k, minlength=n)
    return counts


def add(h: Histogram | None, values: np.ndarray, lo: float, hi: float, absolute: bool) -> Histogram:
    """H with VALUES (one tensor's, flat; LO and HI their min and max) counted in; a new histogram
    of BINS bins over their range where H is None."""
    reach = max(abs(lo), abs(hi))
    if reach < TINY:
        lo = hi = reach = 0.0
    if h is None or (h.lo == h.hi == 0 and reach > 0):
        zeros = 0 if h is None else int(h.counts.sum())  # a tensor all zeros until now
        if reach == 0:
            reach = 1.0  # a range for zeros alone; ORT's np.histogram makes it [-0.5, 0.5]
        width = reach / BINS if absolute else 2 * reach / BINS
        start = 0.0 if absolute else -reach
        counts = bin_counts(values, start, width, BINS, absolute)
        counts[0 if absolute else BINS // 2] += zeros
        lo0, hi0 = (lo, hi) if h is None else (min(h.lo, lo), max(h.hi, hi))
        return Histogram(counts, width, absolute, lo0, hi0)
    top = h.counts.size * h.width if absolute else h.counts.size * h.width / 2
    if reach > top and reach / h.width > (MAX_BINS if absolute else MAX_BINS / 2):
        h = coarsen(h, math.ceil(reach / top))
    n, width = h.counts.size, h.width
    top = n * width if absolute else n * width / 2
    grow = int((reach - top) // width + 1) if reach > top else 0  # whole bins, each side where signed
    size = n + (grow if absolute else 2 * grow)
    start = 0.0 if absolute else -(top + grow * width)
    counts = bin_counts(values, start, width, size, absolute)
    offset = 0 if absolute else grow
    counts[offset : offset + n] += h.counts
    return Histogram(counts, width, absolute, min(h.lo, lo), max(h.hi, hi))


def coarsen(h: Histogram, k: int) -> Histogram:
    """H with bins K times as wide, each the sum of K of H's; zero stays an edge (signed: the bins
    stay symmetric about it, padded with empty ones to a multiple of K on each side)."""
    if absolute := h.absolute:
        counts = np.zeros(-(-h.counts.size // k) * k, np.int64)
        counts[: h.counts.size] = h.counts
    else:
        half, padded = h.counts.size // 2, -(-h.counts.size // 2 // k) * k
        counts = np.zeros(2 * padded, np.int64)
        counts[padded - half : padded + half] = h.counts
    return Histogram(counts.reshape(-1, k).sum(1), h.width * k, absolute, h.lo, h.hi)


def ort_entry(h: Histogram) -> tuple:
    """H as an entry of ORT's HistogramCollector.histogram_dict: (counts, edges, min, max) for
    absolute histograms, plus the threshold for signed ones."""
    edges = (h.start + h.width * np.arange(h.counts.size + 1)).astype(np.float32)
    entry = (h.counts, edges, np.float32(h.lo), np.float32(h.hi))
    return entry if h.absolute else (*entry, np.float32(edges[-1]))


def mse_range(h: Histogram, levels: int = 256) -> tuple[float, float]:
    """The range whose LEVELS-step quantization of H's values has the least mean squared error:
    rounding noise (step^2 / 12) inside, clipping error outside (AIMET's TF-enhanced range, Banner et
    al. 2019's clipping). Searched over shrink factors of both ends together, then each end alone;
    the range always holds 0, as ORT's zero point needs."""
    centres = h.start + h.width * (np.arange(h.counts.size) + 0.5)
    used = h.counts > 0
    x, c = (np.abs(centres[used]), h.counts[used]) if h.absolute else (centres[used], h.counts[used])
    lo0, hi0 = (0.0, max(abs(h.lo), abs(h.hi))) if h.absolute else (min(h.lo, 0.0), max(h.hi, 0.0))
    if hi0 == lo0:
        return float(h.lo), float(h.hi)
    shrink = np.linspace(0.05, 1.0, 96)

    def best(los: np.ndarray, his: np.ndarray) -> tuple[float, float]:
        step = (his - los) / (levels - 1)
        clipped = np.clip(x[None], los[:, None], his[:, None])
        outside = (x[None] - clipped) ** 2
        error = np.where(outside > 0, outside, step[:, None] ** 2 / 12) @ c
        i = int(np.argmin(error))
        return float(los[i]), float(his[i])

    if h.absolute:  # one end: the range is [-t, t]
        return best(-hi0 * shrink, hi0 * shrink)
    lo, hi = best(lo0 * shrink, hi0 * shrink)
    _, hi = best(np.full_like(shrink, lo), hi0 * shrink)
    lo, _ = best(lo0 * shrink, np.full_like(shrink, hi))
    return lo, hi
