"""8-bit weights that cannot saturate a 16-bit pair sum: the `u8s8-pair` INT8 form.

Without VNNI, x86 INT8 kernels (ONNX Runtime's and oneDNN's, so OpenVINO's) add the products of
two adjacent input channels in 16 bits (`vpmaddubsw`): a pair saturates only when both weights
are large and of one sign (255 * (|w0| + |w1|) > 32767). 7-bit weights (|w| <= 64) rule that out
at the price of half the weight resolution everywhere (~6 dB of weight SQNR). Here each output
channel instead gets the scale, between 7 and 8 bits, whose weights after capping every pair to
|w0| + |w1| <= 128 are closest to the fp32 weights; on EfficientNet-Lite1 that keeps the weights
within ~1-2 dB of 8 bits. Pairs are input channels (2j, 2j+1) at one kernel tap, as both
runtimes lay them out; layers with an odd input-channel count, and ops whose layout is not that
(ConvTranspose, batched MatMul), get 7 bits. tests/test_target_cpu.py checks the result under an
emulated AVX2 CPU: it computes bit for bit what it computes on a VNNI one.

No quantization library offers this: ONNX Runtime has `reduce_range`, NNCF and oneDNN 7 bits.
edgekit chooses the scales (passed to ORT's quantizer as per-channel overrides, so biases are
quantized consistently) and caps the pairs in the quantized model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

LIMIT = 128  # 255 * 128 = 32640 <= 32767 and -255 * 128 >= -32768: a pair that cannot saturate


@dataclass(frozen=True)
class PairLayer:
    weight: str  # the fp32 initializer's name
    channel_axis: int  # the per-channel (output) axis
    k_axis: int  # the input-channel axis: pairs are (2j, 2j+1) along it


def layout(op: str, attrs: dict, shape: list[int]) -> tuple[int, int] | None:
    """(channel axis, input-channel axis) of a weight whose pairs this form can bound, or None
    where the kernel's pairing is not adjacent input channels (odd counts, ConvTranspose, N-d MatMul)."""
    if op == "Conv":
        axes = (0, 1)
    elif op == "Gemm":
        axes = (0, 1) if attrs.get("transB") else (1, 0)
    elif op == "MatMul" and len(shape) == 2:
        axes = (1, 0)
    else:
        return None
    return axes if shape[axes[1]] % 2 == 0 else None


def cap(q: np.ndarray) -> np.ndarray:
    """Q (integers, or integer-valued floats, pairs along the last axis) with every same-sign pair's
    magnitudes summing to at most LIMIT: an over-full pair is set to the split of LIMIT nearest to
    its values. Floats are capped as they are (exact at these magnitudes, no int64 copy)."""
    work = q if q.dtype.kind == "f" else q.astype(np.int64)
    a, b = work[..., 0::2], work[..., 1::2]
    over = (np.sign(a) == np.sign(b)) & (np.abs(a) + np.abs(b) > LIMIT)
    if not over.any():
        return q
    # the nearest split: |a'| + |b'| = LIMIT, each magnitude only lowered (|a| + |b| > LIMIT)
    split = np.clip(np.round((LIMIT + np.abs(a) - np.abs(b)) / 2), LIMIT - np.abs(b), np.abs(a))
    new_a = split.astype(work.dtype)
    out = work.copy()
    out[..., 0::2] = np.where(over, np.sign(a) * new_a, a)
    out[..., 1::2] = np.where(over, np.sign(b) * (LIMIT - new_a), b)
    return out


def scales(w: np.ndarray, layer: PairLayer) -> np.ndarray:
    """Per output channel, the scale (max|w| / n, n from 64 to 127) whose capped weights are nearest
    to W in squared error; n = 64 never needs capping, so it is never worse than 7 bits."""
    rows = _rows(w, layer)  # (channels, taps, k)
    peak = np.maximum(np.abs(rows).reshape(len(rows), -1).max(1), 1e-12)
    best_err = np.full(len(rows), np.inf)
    best = peak / 64
    for n in range(64, 128):
        s = (peak / n)[:, None, None]
        q = cap(np.clip(np.round(rows / s), -n, n))
        err = ((q.astype(np.float64) * s - rows) ** 2).reshape(len(rows), -1).sum(1)
        better = err < best_err
        best_err, best = np.where(better, err, best_err), np.where(better, peak / n, best)
    return best.astype(w.dtype)


def cap_weights(q: np.ndarray, layer: PairLayer) -> np.ndarray:
    """The quantized weights Q of LAYER (ORT's rounding at the chosen scales), pairs capped."""
    moved = np.moveaxis(q, (layer.channel_axis, layer.k_axis), (0, -1))
    capped = cap(_rows(q, layer)).reshape(moved.shape)
    return np.moveaxis(capped, (0, -1), (layer.channel_axis, layer.k_axis)).astype(q.dtype)


def _rows(w: np.ndarray, layer: PairLayer) -> np.ndarray:
    """W as (channels, taps, input channels): the pairs along the last axis."""
    moved = np.moveaxis(w, (layer.channel_axis, layer.k_axis), (0, -1))
    return moved.reshape(moved.shape[0], -1, moved.shape[-1])


def worst_pair(q: np.ndarray, layer: PairLayer) -> int:
    """The largest same-sign pair magnitude in the quantized weights Q (<= LIMIT: cannot saturate)."""
    rows = _rows(q.astype(np.int64), layer)
    a, b = rows[..., 0::2], rows[..., 1::2]
    return int(np.where(np.sign(a) == np.sign(b), np.abs(a) + np.abs(b), 0).max(initial=0))


def apply(model_path: Path, layers: list[PairLayer]) -> int:
    """Cap the pairs of LAYERS' quantized weights in the QDQ model at MODEL_PATH (ORT names a
    quantized initializer NAME_quantized); returns how many weight values changed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(model_path))
    inits = {i.name: i for i in model.graph.initializer}
    changed = 0
    for layer in layers:
        init = inits.get(f"{layer.weight}_quantized")
        if init is None:  # excluded from quantization (exclude_nodes, mixed precision)
            continue
        q = numpy_helper.to_array(init)
        capped = cap_weights(q, layer)
        changed += int((capped != q).sum())
        init.CopyFrom(numpy_helper.from_array(capped, init.name))
    onnx.save(model, str(model_path))
    return changed
