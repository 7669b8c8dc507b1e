"""edgekit.compress.histograms: batch-merged histograms give the ranges ONNX Runtime's own collector
gives on the same batches (percentile and entropy, signed and magnitudes), counting every value."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from onnxruntime.quantization.calibrate import HistogramCollector

from edgekit.compress import histograms


def batches() -> list[np.ndarray]:
    """A ReLU-like tensor whose range grows batch by batch, with a heavy tail."""
    rng = np.random.default_rng(0)
    out = []
    for scale in (1.0, 2.5, 0.5, 4.0):
        x = np.maximum(rng.standard_normal(200_000) * scale, 0) + rng.exponential(0.05, 200_000)
        out.append(np.where(rng.random(200_000) < 0.3, -x / 8, x).astype(np.float32))
    return out


def ranges(method: str, symmetric: bool, entries: dict) -> tuple[float, float]:
    collector = HistogramCollector(method, symmetric, histograms.BINS, 128, 99.99, "same")
    collector.histogram_dict = entries
    with contextlib.redirect_stdout(io.StringIO()):
        lo, hi = collector.compute_collection_result()["t"][:2]
    return float(lo), float(hi)


@pytest.mark.parametrize(
    ("method", "symmetric"), [("percentile", False), ("percentile", True), ("entropy", False)]
)
def test_merged_histograms_give_ort_collectors_ranges(method, symmetric):
    data = batches()
    ort = HistogramCollector(method, symmetric, histograms.BINS, 128, 99.99, "same")
    h = None
    with contextlib.redirect_stdout(io.StringIO()):
        for x in data:
            ort.collect({"t": x})
            h = histograms.add(h, x, float(x.min()), float(x.max()), absolute=symmetric)
    assert h.counts.sum() == sum(x.size for x in data)
    assert h.counts.size > histograms.BINS  # the range grew by whole bins
    mine = ranges(method, symmetric, {"t": histograms.ort_entry(h)})
    theirs = ranges(method, symmetric, ort.histogram_dict)
    assert mine[1] > 1  # a range, not the clamp of an empty tail
    # ORT bins magnitudes from their minimum, edgekit from 0: a bin apart at most
    np.testing.assert_allclose(mine, theirs, atol=2 * h.width, rtol=0)


def test_a_tensor_of_zeros_keeps_its_counts_when_values_come():
    zeros = np.zeros(1000, np.float32)
    h = histograms.add(None, zeros, 0.0, 0.0, absolute=False)
    x = np.linspace(-3, 3, 500, dtype=np.float32)
    h = histograms.add(h, x, -3.0, 3.0, absolute=False)
    assert h.counts.sum() == 1500
    centre = h.counts.size // 2
    assert h.counts[centre] >= 1000 and (h.lo, h.hi) == (-3.0, 3.0)
    assert h.start == pytest.approx(-3.0)


def test_values_beyond_the_bins_count_in_the_end_bins():
    counts = histograms.bin_counts(np.array([-5, 0.1, 0.6, 9], np.float32), 0.0, 0.5, 2, absolute=False)
    assert counts.tolist() == [2, 2]


def test_the_least_error_range_clips_a_laplace_tail_where_theory_puts_it():
    """8-bit uniform quantization of Laplace(b) values: the clipping of least MSE is about 9.9 b
    (Banner et al. 2019), far inside the extremes of 2 M samples; after a ReLU the low end stays 0,
    and a symmetric range is one threshold."""
    x = np.random.default_rng(1).laplace(scale=0.5, size=2_000_000).astype(np.float32)
    h = histograms.add(None, x, float(x.min()), float(x.max()), absolute=False)
    lo, hi = histograms.mse_range(h)
    assert -5.3 < lo < -4.6 and 4.6 < hi < 5.3 and hi < 0.8 * x.max()
    relu = np.maximum(x, 0)
    assert histograms.mse_range(histograms.add(None, relu, 0.0, float(relu.max()), absolute=False))[0] == 0
    lo, hi = histograms.mse_range(histograms.add(None, x, float(x.min()), float(x.max()), absolute=True))
    assert lo == -hi and 4.6 < hi < 5.3
