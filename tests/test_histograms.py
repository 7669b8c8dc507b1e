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


@pytest.mark.parametrize("absolute", [False, True])
def test_denormal_values_count_as_zeros_and_a_real_range_replaces_them(absolute):
    """A tensor of values around 1e-41 (a randomly initialised MobileViT has such): its bins would
    be denormal and their inverse width overflow float32 (negative bin indices before); it counts as
    zeros, and the values that come later set the range."""
    tiny = np.array([0, 4e-41, -3e-41, 1e-38], np.float32)
    h = histograms.add(None, tiny, float(tiny.min()), float(tiny.max()), absolute)
    assert h.counts.sum() == 4 and h.counts[h.counts.size // 2 if not absolute else 0] == 4
    x = np.linspace(-3, 3, 500, dtype=np.float32)
    h = histograms.add(h, x, -3.0, 3.0, absolute)
    assert h.counts.sum() == 504 and h.width == pytest.approx((3 if absolute else 6) / histograms.BINS)


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


@pytest.mark.parametrize("symmetric", [False, True])
def test_a_range_that_grows_ten_thousandfold_stays_a_histogram_of_bins_size(symmetric):
    """A stream's first sample is silence: its tensors span 1e-4 of what speech later needs. ORT's
    whole-bin growth made 20 M bins of Silero VAD's (and its percentile broke on them); the bins
    are summed into wider ones instead, and the range is the one a histogram of all values gives."""
    rng = np.random.default_rng(0)
    quiet = (rng.standard_normal(10_000) * 1e-4).astype(np.float32)
    loud = (rng.standard_normal(400_000) * rng.exponential(1, 400_000)).astype(np.float32)
    h = None
    for x in (quiet, loud):
        h = histograms.add(h, x, float(x.min()), float(x.max()), absolute=symmetric)
    assert h.counts.sum() == quiet.size + loud.size
    assert h.counts.size <= 2 * histograms.BINS
    assert h.start + h.counts.size * h.width >= float(np.abs(loud).max())  # every value in range
    fresh = histograms.add(
        None, x := np.concatenate([quiet, loud]), float(x.min()), float(x.max()), symmetric
    )
    for method in ("percentile", "entropy") if not symmetric else ("percentile",):
        mine = ranges(method, symmetric, {"t": histograms.ort_entry(h)})
        once = ranges(method, symmetric, {"t": histograms.ort_entry(fresh)})
        np.testing.assert_allclose(mine, once, atol=2 * max(h.width, fresh.width), rtol=0)


def test_coarsened_bins_sum_their_parts_about_zero():
    h = histograms.add(None, np.array([-1.5, -0.2, 0.2, 0.7, 1.9], np.float32), -1.5, 1.9, absolute=False)
    c = histograms.coarsen(h, 3)
    assert c.counts.sum() == 5 and c.width == pytest.approx(3 * h.width)
    assert c.counts.size % 2 == 0 and c.start < 0 < c.start + c.counts.size * c.width
    centres = c.start + c.width * (np.arange(c.counts.size) + 0.5)
    assert np.sum(c.counts * (centres > 0)) == 3  # zero stays an edge: no bin holds both signs
