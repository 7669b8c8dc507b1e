"""Numbers from outputs and timings. numpy only: the worker imports this on any device."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import numpy as np

from edgekit.errors import EdgekitError


def latency_stats(seconds: list[float], batch: int) -> dict:
    """Latency distribution in milliseconds, and throughput in samples per second."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    median = float(np.median(ms))
    return {
        "count": int(ms.size),
        "median_ms": median,
        "mean_ms": float(ms.mean()),
        "std_ms": float(ms.std()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "cv": float(ms.std() / ms.mean()) if ms.mean() else 0.0,
        "throughput_per_s": batch * 1e3 / median if median else 0.0,
    }


def interleaved_medians(
    runners: dict[str, Callable[[], object]], rounds: int, runs: int, warmup: int = 5
) -> dict[str, list[float]]:
    """Median latency (ms) of each in-process runner per round, the runners alternating within
    each round (A B C A B C ...) so machine noise hits them alike; WARMUP untimed calls first."""
    medians: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(runs):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            medians[name].append(float(np.median(times)) * 1e3)
    return medians


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio, 20·log10(‖ref‖/‖ref−out‖); inf when identical."""
    ref = np.asarray(ref, np.float64).ravel()
    noise = np.linalg.norm(ref - np.asarray(out, np.float64).ravel())
    if noise == 0:
        return float("inf")
    return float(20 * np.log10(max(np.linalg.norm(ref), 1e-30) / noise))


def cosine(ref: np.ndarray, out: np.ndarray) -> float:
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(out, np.float64).ravel()
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def max_abs_diff(ref: np.ndarray, out: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(ref, np.float64) - np.asarray(out, np.float64))))


KINDS = ("classes", "embedding", "sequence", "dense", "image", "segmentation", "labels", "other")
# each kind's main fidelity number (a fraction, 1 for an output equal to its reference) and its name
# in sentences; "other" has none that a drop can be read from, only SQNR
MAIN: dict[str, tuple[str, str]] = {
    "classes": ("top1_agreement", "top-1 agreement"),
    "embedding": ("cosine_mean", "mean cosine"),
    "sequence": ("position_agreement", "position agreement"),
    "dense": ("mask_iou", "mask IoU"),
    "image": ("ssim_mean", "mean SSIM"),
    "segmentation": ("pixel_agreement", "pixel agreement"),
    "labels": ("equal", "labels equal"),
}


def main_number(fid: dict) -> tuple[str, str] | None:
    """The key and name of one output's main fidelity number (a fraction, 1 = the reference's):
    its kind's (MAIN), or for an `other` output of independent probabilities (Silero VAD's speech
    probability) the IoU of their decisions above 0.5; None where it has none (SQNR only)."""
    kind = fid.get("kind", "classes" if "top1_agreement" in fid else "")
    key, name = MAIN.get(kind, ("decisions_iou", "decisions IoU") if kind == "other" else (None, None))
    return (key, name) if key in fid else None


_EMBEDDING_NAMES = ("embed", "pool", "sentence", "hidden", "feature")
_CLASS_NAMES = ("logit", "score", "prob", "class")
_STATE_NAMES = ("state", "present", "past_key", "cache")
# coordinates regressed, not scores: the argmax of MTCNN's 4 box offsets or 10 landmark coordinates
# means nothing (judged as classes, its boxes read 92 % "agreement" at 6 dB)
_REGRESSION_NAMES = ("box", "landmark", "keypoint", "kpt", "offset", "delta", "regress", "coord")


def output_kind(ref: np.ndarray, name: str = "") -> str:
    """What one output is, so it is judged by the metric that fits it (docs/guide/quantize.md):
    a name saying embed/pool/sentence/hidden/feature means an embedding, logit/score/prob/class
    means scores, state/present/past_key/cache a state handed back (a recurrent state, a
    decoder's attention cache: other), box/landmark/keypoint/kpt/offset/delta/regress/coord (and
    no score word) coordinates a detector regresses (other); else by shape and values: [N, C]
    (C >= 2) is class scores unless every row has unit L2 norm and is not a probability vector (an
    embedding), [N, T, C] is a sequence of class scores unless its values vary smoothly along both
    axes (a [N, H, W] map) or are independent probabilities (a dense detector's per-anchor sigmoid
    scores: other); four or more axes are a map, or per-pixel class scores where one
    axis is classes (segmentation, class_axis); a map whose values fill their range is an image (a
    super-resolved or denoised picture, a depth map: image), one that is mostly background at the
    low end of its range a score or heat map (dense, fills_range); anything else other. Axes of size
    1 beside the batch are read through: [N, 1, 1, C] (a TensorFlow CNN's pooled features) and
    [N, C, 1, 1] are vectors, not maps. Integers are labels whatever their shape (a classifier's
    ArgMax, skl2onnx's label output, a segmenter's class map): equal or not."""
    ref = vectors(ref)
    if ref.dtype.kind in "biu":
        return "labels"
    low = name.lower()
    scores = ref.ndim >= 2 and ref.shape[-1] >= 2
    if scores and any(w in low for w in _EMBEDDING_NAMES):
        return "embedding"
    if any(w in low for w in _STATE_NAMES):  # handed back for the next call: Silero VAD's stateN,
        return "other"  # a decoder's attention cache (optimum's present.N.key)
    if any(w in low for w in _REGRESSION_NAMES) and not any(w in low for w in _CLASS_NAMES):
        return "other"
    if ref.ndim >= 4 and class_axis(ref) is not None:
        return "segmentation"
    if ref.ndim >= 4:
        return "image" if fills_range(ref) else "dense"
    if not scores or ref.ndim not in (2, 3):
        return "other"
    if not any(w in low for w in _CLASS_NAMES) and _unit_rows(ref):
        return "embedding"
    if ref.ndim == 3 and min(_neighbours(ref, 1), _neighbours(ref, 2)) >= SMOOTH:
        # a [N, H, W] map (depth, a heat map, probabilities): its values vary smoothly along both axes
        return "image" if fills_range(ref) else "dense"
    if ref.ndim == 3 and independent_scores(ref):
        return "other"
    return "classes" if ref.ndim == 2 else "sequence"


# lag-1 correlation above which an axis is spatial (an image's rows, a depth map: 0.9 and up); a
# class axis is near 0 (PP-OCRv4's 6625 characters: 0.0001), a softmax over two classes -1
SMOOTH = 0.5
# mean correlation of channels below which they are classes competing for each pixel (a softmax over
# two: -1); an image's RGB rises together (0.9 and up), and so do a detector's score maps
COMPETE = 0.3


# where a map's median lies in its range above which its values fill the range, as a picture's or a
# depth map's do (waifu2x's upscaled photos: 0.42-0.46); a score or heat map is background at the
# low end of its range almost everywhere (text regions, a face, a keypoint: its median at 0)
FILLED = 0.1


def _spread(a: np.ndarray, values: int = 1 << 20) -> np.ndarray:
    """About VALUES of A's values, evenly spaced, as float64 (a percentile of all of PP-OCR's
    300 x 736 x 736 probability maps would copy 1.3 GB)."""
    flat = np.asarray(a).ravel()
    return np.asarray(flat[:: max(1, flat.size // values)], np.float64)


def value_range(ref: np.ndarray) -> tuple[float, float]:
    """The range REF's values span, from their 0.1st to their 99.9th percentile: an image's nominal
    range (an upscaler's output overshoots [0, 1] on a few edge pixels)."""
    lo, hi = np.percentile(_spread(ref), [0.1, 99.9])
    return float(lo), float(hi)


def fills_range(ref: np.ndarray) -> bool:
    """The median of REF's values lies above FILLED of their range: a picture or a depth map, not a
    map of scores that is background almost everywhere."""
    lo, hi = value_range(ref)
    return hi > lo and (float(np.median(_spread(ref))) - lo) / (hi - lo) > FILLED


def _neighbours(a: np.ndarray, axis: int, values: int = 1 << 20) -> float:
    """The correlation of A's neighbouring values along AXIS (each line's mean taken out), on evenly
    spaced lines of about VALUES values in all (a CTC output is 300 x 40 x 18710)."""
    lines = np.moveaxis(np.asarray(a), axis, -1).reshape(-1, a.shape[axis])
    if lines.shape[-1] < 2:
        return 0.0
    a = np.asarray(lines[:: max(1, lines.size // values)], np.float64)
    a = a - a.mean(-1, keepdims=True)
    x, y = a[..., :-1].ravel(), a[..., 1:].ravel()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom else 0.0


def class_axis(ref: np.ndarray) -> int | None:
    """The axis of per-pixel class scores of a map of 4+ axes, 1 ([N, C, H, W]) or the last
    ([N, H, W, C]): of 2 classes or more that do not rise together (classes compete for a pixel;
    a softmax over two is perfectly anticorrelated) where the other axes vary smoothly. None for a
    map of one score or of channels that rise together (an image's RGB, CRAFT's region and
    affinity scores)."""
    for axis, spatial in ((1, ref.ndim - 1), (ref.ndim - 1, 1)):
        if ref.shape[axis] >= 2 and _together(ref, axis) < COMPETE and _neighbours(ref, spatial) >= SMOOTH:
            return axis
    return None


def _together(a: np.ndarray, axis: int, pixels: int = 65536) -> float:
    """The mean correlation, over pixels, of each pair of A's channels along AXIS."""
    c = np.moveaxis(np.asarray(a, np.float64), axis, 0).reshape(a.shape[axis], -1)
    c = c[:, :: max(1, c.shape[1] // pixels)]
    c = c - c.mean(1, keepdims=True)
    norms = np.linalg.norm(c, axis=1)
    c = c[norms > 0] / norms[norms > 0, None]
    if len(c) < 2:
        return 1.0  # constant channels: nothing competes
    corr = c @ c.T
    return float((corr.sum() - np.trace(corr)) / (len(c) * (len(c) - 1)))


def vectors(a: np.ndarray) -> np.ndarray:
    """A, [N, C] where all its axes but the batch and one are of size 1 (a vector per sample)."""
    a = np.asarray(a)
    if a.ndim >= 3 and sum(d > 1 for d in a.shape[1:]) <= 1:
        return a.reshape(len(a), -1)
    return a


def independent_scores(ref: np.ndarray) -> bool:
    """Every value in [0, 1] and the rows no probability vectors: each class scored on its own by a
    sigmoid, as a dense detector scores each anchor ([N, anchors, classes], PicoDet, RetinaNet).
    Most anchors hold no object, and which class scores highest there is noise: the argmax a
    sequence is judged by does not apply (PicoDet's layout head: 45 % position agreement at
    SQNRs that moved nothing a detector reports); such an output is judged by SQNR."""
    a = np.asarray(ref)
    return bool(a.size) and bool(a.min() >= 0 and a.max() <= 1) and not probability_rows(a)


def probability_rows(ref: np.ndarray) -> bool:
    """The last axis already holds probabilities (the model ends in a Softmax): non-negative rows
    that sum to 1."""
    rows = np.asarray(ref, np.float64).reshape(-1, ref.shape[-1])
    return bool(rows.size) and bool(np.all(rows >= 0) and np.allclose(rows.sum(1), 1, atol=1e-3))


def log_probabilities(x: np.ndarray, probabilities: bool) -> np.ndarray:
    """Log-probabilities over the last axis: the log-softmax of scores, or, where the model already
    ends in a Softmax (PROBABILITIES, read from the fp32 reference), the log of its values
    renormalized (a softmax of probabilities is nearly uniform over many classes: every divergence
    measured on it is ~0)."""
    x = np.asarray(x, np.float64)
    if probabilities:
        x = np.clip(x, 1e-12, None)
        return np.log(x / x.sum(axis=-1, keepdims=True))
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _unit_rows(ref: np.ndarray) -> bool:
    """Every row has unit L2 norm and is no probability vector (a confident softmax is nearly
    one-hot, so of nearly unit norm too)."""
    rows = np.asarray(ref, np.float64).reshape(-1, ref.shape[-1])
    if not rows.size or probability_rows(rows):
        return False
    return bool(np.all(np.abs(np.linalg.norm(rows, axis=1) - 1) < 1e-3))


def compare_outputs(
    ref: np.ndarray, out: np.ndarray, kind: str | None = None, valid: np.ndarray | None = None
) -> dict:
    """Fidelity of one output to its reference: SQNR, cosine and max abs diff always, and the
    metric of its KIND (inferred by output_kind when None); where VALID ([N, T] booleans: a
    transformer's positions that are no padding, edgekit.compress.padding_mask) matches the
    output's first two axes, on those positions only."""
    kind = kind or output_kind(ref)
    if valid is not None and ref.ndim >= 3 and ref.shape[:2] == valid.shape:
        kept = compare_outputs(ref[valid], out[valid], "other" if kind == "sequence" else kind)
        kept = {**kept, "kind": kind, "padding_left_out": int((~valid).sum())}
        if kind == "sequence":  # a sample's padded positions agree: its sequence is what it keeps
            forced = compare_outputs(ref, np.where(valid[(...,) + (None,) * (ref.ndim - 2)], out, ref), kind)
            a, b = ref.argmax(-1), out.argmax(-1)
            position = float(np.mean((a == b)[valid])) if valid.any() else 1.0
            kept |= {k: forced[k] for k in forced if "agreement" in k} | {"position_agreement": position}
        return kept
    ref, out = vectors(ref), vectors(out)
    result = {
        "kind": kind,
        "sqnr_db": sqnr_db(ref, out),
        "cosine": cosine(ref, out),
        "max_abs_diff": max_abs_diff(ref, out),
    }
    if kind == "classes" and ref.ndim >= 2:
        ref2, out2 = ref.reshape(len(ref), -1), out.reshape(len(out), -1)
        result["top1_agreement"] = float(np.mean(ref2.argmax(1) == out2.argmax(1)))
    elif kind == "embedding" and ref.ndim >= 2:
        rows = row_cosines(ref.reshape(-1, ref.shape[-1]), out.reshape(-1, out.shape[-1]))
        result.update(cosine_mean=float(rows.mean()), cosine_min=float(rows.min()))
    elif kind == "sequence" and ref.ndim >= 3:
        a, b = ref.argmax(-1).reshape(len(ref), -1), out.argmax(-1).reshape(len(out), -1)
        result["sequence_agreement"] = float(np.mean(np.all(a == b, axis=1)))
        if padded_after_end(a):  # an attention decoder's tokens: the padding after both ends is no agreement
            counted = (a != a[0, -1]) | (b != a[0, -1])
            result["position_agreement"] = float(np.mean((a == b)[counted])) if counted.any() else 1.0
            result["padded_after_end"] = True
        else:
            result["position_agreement"] = float(np.mean(a == b))
            result["decoded_agreement"] = decoded_agreement(a, b)
    elif kind == "dense" and ref.ndim >= 2:
        result["mask_iou"] = mask_iou(ref, out)
    elif kind == "image" and ref.ndim >= 3:
        result.update(image_fidelity(ref, out))
    elif kind == "labels":
        result["equal"] = float(np.mean(ref == out))
    elif kind == "other" and ref.ndim >= 2 and independent_scores(ref):
        result["decisions_iou"] = decisions_iou(ref, out)
    elif kind == "segmentation" and ref.ndim >= 3:
        axis = class_axis(ref)
        axis = 1 if axis is None else axis  # given by --output-kind: channels first
        result["pixel_agreement"] = float(np.mean(ref.argmax(axis) == out.argmax(axis)))
    return result


def padded_after_end(ids: np.ndarray) -> bool:
    """Whether every row of IDS ends in a run of one class that appears nowhere before that run:
    an attention decoder's tokens padded after its end token (SLANet's table structure, a
    translation), not CTC, whose blank also runs between the characters and whose greedy decoding
    would merge the decoder's repeated tokens (a table's run of cells)."""
    if ids.ndim != 2 or not ids.size or np.any(ids[:, -1] != ids[0, -1]):
        return False
    pad = ids == ids[0, -1]
    return bool(np.array_equal(np.maximum.accumulate(pad, axis=1), pad))


def decoded_agreement(ref_ids: np.ndarray, out_ids: np.ndarray) -> float:
    """Share of rows whose CTC greedy decodings agree: repeats collapsed, then the blank dropped.
    The blank is taken to be the class the reference predicts most often (CTC models predict it
    at most positions, whether it is their first class or their last). What an OCR or speech user
    reads: a position moved within a run of the same character does not change the text."""
    blank = np.bincount(ref_ids.ravel()).argmax()

    def decode(ids: np.ndarray) -> list[np.ndarray]:
        keep = np.ones(ids.shape, bool)
        keep[:, 1:] = ids[:, 1:] != ids[:, :-1]
        keep &= ids != blank
        return [row[k] for row, k in zip(ids, keep, strict=True)]

    pairs = zip(decode(ref_ids), decode(out_ids), strict=True)
    return float(np.mean([np.array_equal(r, o) for r, o in pairs]))


def row_cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of OUT to the same row of REF (1 where both are zero)."""
    a, b = np.asarray(ref, np.float64), np.asarray(out, np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    same = np.all(a == b, axis=1).astype(np.float64)
    return np.where(denom > 0, dots / np.where(denom > 0, denom, 1), same)


def decisions_iou(ref: np.ndarray, out: np.ndarray) -> float:
    """IoU of the entries above 0.5 in REF and in OUT, over all samples: what a user thresholding
    independent probabilities (a detector's per-anchor scores, a transcriber's note posteriors)
    keeps; 1 where neither has any."""
    a, b = np.asarray(ref) > 0.5, np.asarray(out) > 0.5
    union = int(np.sum(a | b))
    return float(np.sum(a & b) / union) if union else 1.0


def mask_iou(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean IoU of the masks where each sample's map exceeds half its reference's maximum (the
    same threshold for both maps); 1 for a sample where both masks are empty."""
    a = np.asarray(ref, np.float64).reshape(len(ref), -1)
    b = np.asarray(out, np.float64).reshape(len(out), -1)
    threshold = 0.5 * a.max(1, keepdims=True)
    ma, mb = a > threshold, b > threshold
    union = np.sum(ma | mb, axis=1)
    inter = np.sum(ma & mb, axis=1)
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def image_fidelity(ref: np.ndarray, out: np.ndarray) -> dict:
    """What users of image-to-image models read: the structural similarity of each sample (Wang et
    al. 2004, as scikit-image computes it: a 7x7 window, sample covariances, K1 0.01, K2 0.03),
    its mean and least, and PSNR over all samples, both with the reference's value_range as the
    data range. The two largest axes beside the batch are the picture's (NCHW, NHWC, [N, H, W])."""
    a, b = _pictures(ref), _pictures(out)
    lo, hi = value_range(ref)
    span = hi - lo if hi > lo else 1.0
    mse = float(np.mean((a - b) ** 2))
    ssim = _ssim(a, b, span)
    return {
        "ssim_mean": float(ssim.mean()),
        "ssim_min": float(ssim.min()),
        "psnr_db": float("inf") if mse == 0 else float(10 * np.log10(span * span / mse)),
    }


def _pictures(a: np.ndarray) -> np.ndarray:
    """A as [N, planes, H, W] float64, H and W its two largest axes beside the batch."""
    a = np.asarray(a, np.float64)
    spatial = sorted(sorted(range(1, a.ndim), key=lambda k: a.shape[k])[-2:])
    a = np.moveaxis(a, spatial, [-2, -1])
    return a.reshape(len(a), -1, *a.shape[-2:])


def _ssim(a: np.ndarray, b: np.ndarray, span: float) -> np.ndarray:
    """The mean SSIM of each sample of A and B ([N, planes, H, W]) over every full window."""
    w = min(7, *a.shape[-2:])
    mean = functools.partial(_window_mean, size=w)
    ma, mb = mean(a), mean(b)
    n = w * w / (w * w - 1)  # sample covariances, as scikit-image's default
    va, vb, cov = n * (mean(a * a) - ma * ma), n * (mean(b * b) - mb * mb), n * (mean(a * b) - ma * mb)
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    s = (2 * ma * mb + c1) * (2 * cov + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return s.reshape(len(s), -1).mean(1)


def _window_mean(a: np.ndarray, size: int) -> np.ndarray:
    """The mean of each full SIZE x SIZE window over A's last two axes (summed-area table)."""
    c = np.pad(a, [(0, 0)] * (a.ndim - 2) + [(1, 0), (1, 0)]).cumsum(-1).cumsum(-2)
    return (c[..., size:, size:] - c[..., :-size, size:] - c[..., size:, :-size] + c[..., :-size, :-size]) / (
        size * size
    )


def accuracy(scores: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Top-k accuracy of class scores (N, classes) against integer labels."""
    topk = np.argsort(-scores, axis=1)[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def fidelity(
    ref: list[np.ndarray],
    out: list[np.ndarray],
    names: list[str] | None = None,
    kinds: dict[str, str] | None = None,
    valid: np.ndarray | None = None,
) -> dict:
    """Fidelity of a model's outputs to its parent's, each output judged by its own kind (KINDS
    maps an output's name, or output_N, to a kind; else output_kind infers it from NAMES and the
    values), an output per position on the positions VALID marks (compare_outputs); plus agreement
    where the parent was confident, because INT8 errors concentrate on low-confidence inputs."""
    names = names or []
    kinds = kinds or {}
    result = {}
    for i, (r, o) in enumerate(zip(ref, out, strict=True)):
        name = names[i] if i < len(names) else ""
        if r.shape != o.shape:  # a selection's output (NonMaxSuppression ...): sized by the values
            raise EdgekitError(
                f"output {name or i!r} is {list(o.shape)} here and {list(r.shape)} in the reference: its "
                "size depends on the values (a selection such as NonMaxSuppression), so it cannot be "
                "compared value by value; `edgekit compress` judges such a model before its selection "
                "and compares the selections per sample (the artifact's verification.selection)."
            )
        kind = kinds.get(name) or kinds.get(f"output_{i}") or output_kind(r, name)
        result[f"output_{i}"] = compare_outputs(r, o, kind, valid) | ({"name": name} if name else {})
    r, o = ref[0], out[0]
    if result["output_0"]["kind"] == "classes" and r.ndim == 2 and r.shape[1] > 1:
        confident = np.exp(log_probabilities(r, probability_rows(r)).max(1)) >= 0.9
        if confident.any():
            result["top1_agreement_confident"] = float(
                np.mean(r[confident].argmax(1) == o[confident].argmax(1))
            )
            result["confident_fraction"] = float(confident.mean())
    return result


def kind_line(fid: dict) -> str:
    """One output's fidelity by its kind, as reports print it, e.g. 'embedding: cosine 0.998
    (min 0.991)', saying where padded positions were left out."""
    line = _kind_line(fid)
    if fid.get("padding_left_out"):
        kind, _, rest = line.partition(": ")
        return f"{kind} (padded positions left out): {rest}"
    return line


def _kind_line(fid: dict) -> str:
    kind = fid.get("kind", "classes" if "top1_agreement" in fid else "other")
    if "top1_agreement" in fid:
        return f"{kind}: top-1 agreement {100 * fid['top1_agreement']:.2f} %"
    if "cosine_mean" in fid:
        return f"{kind}: cosine {fid['cosine_mean']:.3f} (min {fid['cosine_min']:.3f})"
    if "sequence_agreement" in fid:
        return (
            f"{kind}: sequences equal {100 * fid['sequence_agreement']:.2f} %, "
            + ("positions before the padding " if fid.get("padded_after_end") else "positions ")
            + f"{100 * fid['position_agreement']:.2f} %"
            + (
                f", CTC-decoded equal {100 * fid['decoded_agreement']:.2f} %"
                if "decoded_agreement" in fid
                else ""
            )
        )
    if "mask_iou" in fid:
        return f"{kind}: mask IoU {fid['mask_iou']:.3f}"
    if "equal" in fid:
        return f"{kind}: equal {100 * fid['equal']:.2f} %"
    if "ssim_mean" in fid:
        return (
            f"{kind}: SSIM {fid['ssim_mean']:.3f} (min {fid['ssim_min']:.3f}), PSNR {fid['psnr_db']:.1f} dB"
        )
    if "pixel_agreement" in fid:
        return f"{kind}: pixel agreement {100 * fid['pixel_agreement']:.2f} %"
    if "decisions_iou" in fid:
        iou, diff = fid["decisions_iou"], fid["max_abs_diff"]
        return f"{kind}: decisions above 0.5 IoU {iou:.3f}, max abs diff {diff:.3g}"
    return f"{kind}: max abs diff {fid['max_abs_diff']:.3g}"
