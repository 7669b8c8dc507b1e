"""A graph input's INT8 scale moved off the grid its data lies on, where the model gains by it.

Pictures come from 8-bit pixels, so a normalized input lies on a grid: p / 127.5 - 1 (a GAN's, a
ViT's mean 0.5 / std 0.5) takes 256 values spaced 2/255 apart, and its calibrated range [-1, 1]
gives u8 (or s8) levels spaced 2/255 apart too, but half a step off: every pixel is a tie. Exactly
on the grid, ties round by a pixel's parity, a fixed dither of half a step. Near it (a picture a
network computed, not yet saved as 8 bits) the small signal riding on the pixels decides each tie,
and comes out half a step tall: RivaGAN's watermark decoder fed its encoder's float frames read
16 dB SQNR at that scale, 26 dB off it. The calibrated range does not see this (it holds the
values either way), and the range search rarely reaches the input (it searches the last
activations first).

ORT's quantizer and NNCF set an input's range from its values alone; edgekit measures each graph
input's quantization error on its calibration values, exactly as QuantizeLinear rounds them, at
scales within SPAN of the calibrated one (the range barely changes), and takes the best where it
removes a clear share of that error and the model's outputs on CHECKED calibration samples come
closer to fp32's with it. On data off any grid (most inputs) the error is flat there and the
scale stays; on 8-bit frames exactly on the grid the dither served RivaGAN's decoder better (31.6
vs 30.0 dB) than the smaller, picture-shaped error off it, and the output check keeps the scale.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.compress import model_file, range_search
from edgekit.data import Samples

# ops that hand on their input's values as they are (a Squeeze before a 2-D convolution: planar_conv3d)
MOVES = ("Squeeze", "Unsqueeze", "Reshape", "Transpose", "Flatten", "Identity")
SPAN = 0.02  # scales tried: the calibrated one x (1 +- SPAN), in STEPS
STEPS = 40
GAIN = 0.8  # a scale is taken where its squared error is at most this share of the calibrated one's
# an error below this share of uniform rounding's (scale^2 / 12) is the levels holding the values up
# to float32's rounding: left as it is
EXACT = 1e-3
VALUES = 1 << 21  # calibration values measured per input (an even subsample beyond)
CHECKED = 16  # calibration samples on which the moved scales must bring the outputs closer to fp32's


def factors(
    qdq: Path,
    source: Path,
    fp32: Path,
    calib: Samples,
    fixed: int | None,
    known: dict,
    declared: dict | None = None,
) -> dict:
    """Per scale initializer of a graph input's QuantizeLinear in QDQ (a file ORT's quantizer wrote
    from SOURCE; the input may reach it through ops that only move its values: MOVES), the factor on
    it that rounds the input's CALIB values with the least squared error, where it beats the
    calibrated scale's by GAIN and the moved scales bring QDQ's outputs closer to FP32's (a model
    whose batch is FIXED, or None); the others are left out. KNOWN holds the factors found before
    (1: kept), by scale name, and gets the new ones: a model written again (a mixed-precision
    trial) reuses them. DECLARED: the output kinds the user gave (range_search.judged_kinds)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(qdq), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    origin = {name: name for name in calib.inputs}  # tensor -> the graph input whose values it holds
    for n in model.graph.node:
        if n.op_type in MOVES and n.input and n.input[0] in origin:
            origin[n.output[0]] = origin[n.input[0]]
    found, new = {}, {}
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in origin or len(q.input) < 3:
            continue
        if q.input[1] not in inits or q.input[2] not in inits:
            continue
        if q.input[1] in known:
            found[q.input[1]] = known[q.input[1]]
            continue
        scale = numpy_helper.to_array(inits[q.input[1]])
        zero = numpy_helper.to_array(inits[q.input[2]])
        if scale.size != 1 or zero.size != 1:
            continue
        values = _values(np.asarray(calib.inputs[origin[q.input[0]]]))
        if values is not None:
            new[q.input[1]] = _best(values, float(scale.reshape(-1)[0]), zero.reshape(-1)[0])
    moved = {k: f for k, f in new.items() if f != 1.0}
    if moved and not _closer(qdq, source, fp32, calib, fixed, moved, declared):
        new = dict.fromkeys(new, 1.0)
    known.update(new)
    found.update(new)
    return {k: f for k, f in found.items() if f != 1.0}


def _closer(
    qdq: Path, source: Path, fp32: Path, calib: Samples, fixed: int | None, moved: dict, declared: dict | None
) -> bool:
    """Whether QDQ's outputs on the first CHECKED calibration samples come closer to FP32's with its
    scales MOVED (range_search's output error: the KL divergence of class scores, else squared error
    over fp32's variance; the outputs judged by the kinds DECLARED where given)."""
    import onnx
    import onnxruntime as ort

    samples = calib.take(slice(0, CHECKED))

    def outputs(path: Path) -> tuple[list[np.ndarray], list[str]]:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        run = lambda feeds: session.run(None, feeds)  # noqa: E731
        return batching.outputs(run, samples.inputs, fixed, 16), [o.name for o in session.get_outputs()]

    ref, names = outputs(fp32)
    kinds = range_search.judged_kinds(ref, names, declared)
    with tempfile.TemporaryDirectory(prefix="edgekit-grid-") as tmp:
        trial = Path(tmp) / "moved.onnx"
        model_file.save(onnx.load(str(qdq)), trial)
        range_search.apply(trial, source, moved)
        errors = [range_search.output_error(outputs(p)[0], ref, kinds) for p in (qdq, trial)]
    return errors[1] < errors[0]


def _values(data: np.ndarray) -> np.ndarray | None:
    """Up to VALUES of DATA's values as float32, evenly spread over it; None where it is no float."""
    if not np.issubdtype(data.dtype, np.floating) or data.size == 0:
        return None
    flat = data.reshape(-1)
    return np.asarray(flat[:: max(1, flat.size // VALUES)], dtype=np.float32)


def _error(values: np.ndarray, scale: float, zero) -> float:
    """Mean squared error of VALUES through QuantizeLinear -> DequantizeLinear at SCALE and ZERO
    (whose dtype gives the levels): float32 division, rounding half to even, as ONNX Runtime does."""
    info = np.iinfo(zero.dtype)
    s = np.float32(scale)
    q = np.clip(np.rint(values / s) + np.float32(zero), info.min, info.max)
    return float(np.mean(((q - np.float32(zero)) * s - values).astype(np.float64) ** 2))


def _best(values: np.ndarray, scale: float, zero) -> float:
    """The factor on SCALE (1 where none beats it by GAIN) with the least `_error` on VALUES."""
    calibrated = _error(values, scale, zero)
    if calibrated < EXACT * scale**2 / 12:  # the levels hold the values (bits: 0 and 1)
        return 1.0
    tried = 1 + SPAN * np.linspace(-1, 1, STEPS + 1)
    errors = [_error(values, scale * f, zero) for f in tried]
    k = int(np.argmin(errors))
    return float(tried[k]) if errors[k] <= GAIN * calibrated else 1.0
