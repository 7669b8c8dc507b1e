"""Activations that carry sentinel values rather than a distribution, found before calibration.

An additive attention mask holds 0 and the dtype's minimum (or -1e9, -10000); added to the scores,
it makes a tensor whose range is the sentinel's. A histogram over it fails ("Too many bins for
data range"), and a min/max range over it leaves the real values one or two quantization steps.
Such tensors are left in float, and named.
"""

from __future__ import annotations

import numpy as np

GAP = 1e3  # a cluster of magnitudes this far beyond all the others is a sentinel...
LARGE = 1e3  # ...when its values are at least this large (tiny values near zero are not)
SAMPLE = 1 << 16  # magnitudes looked at per tensor and chunk


def reason(values: np.ndarray, lo: float | None = None, hi: float | None = None) -> str | None:
    """Why VALUES (one tensor's, flattened; LO and HI their min and max where known) are not to
    be quantized, or None."""
    if values.size == 0:
        return None
    if lo is None or hi is None:
        lo, hi = float(values.min()), float(values.max())
    if not (np.isfinite(lo) and np.isfinite(hi)):  # a NaN anywhere makes the min and max NaN
        bad = values[~np.isfinite(values)][0]
        return f"non-finite values ({bad})"
    extreme = lo if -lo >= hi else hi
    what = f"{'min' if extreme == lo else 'max'} {extreme:.3g}"
    if abs(extreme) >= np.finfo(values.dtype).max / 2:
        return f"the dtype's extreme value ({what})"
    mags = np.abs(np.concatenate([values[:: max(1, values.size // SAMPLE)], [lo, hi]]))
    logs = np.log10(np.sort(mags[mags > 0]))
    if logs.size < 2:
        return None
    gaps = np.diff(logs)
    i = int(np.argmax(gaps))
    if gaps[i] >= np.log10(GAP) and 10 ** logs[i + 1] >= LARGE:
        return f"values {GAP:.0e}x beyond the rest ({what})"
    return None


def label(tensor: str, why: str, consumers: dict[str, list]) -> str:
    """TENSOR and WHY for the pass summary, called an additive attention mask where its sentinel
    is negative and it reaches a Softmax within two nodes."""
    near = list(consumers.get(tensor, []))
    near += [c for n in near for o in n.output for c in consumers.get(o, [])]
    if "min " in why and any(n.op_type == "Softmax" for n in near):
        why = f"additive attention mask ({why.rsplit('(', 1)[-1]}"
    return f"{tensor}: {why}"
