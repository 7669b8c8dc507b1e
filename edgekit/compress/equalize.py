"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction") of consecutive convolutions in an fp32 ONNX graph, before INT8 calibration.

For Conv1 -> ReLU/ReLU6/nothing -> Conv2 (Conv2 dense or depthwise), ReLU(x / s) = ReLU(x) / s for
s > 0: output channel i of Conv1 (weights and bias) is divided by s_i and input channel i of Conv2
multiplied by it, with s_i = sqrt(r1_i / r2_i) (r: the channel's max |weight|), so both channels end
with range sqrt(r1_i * r2_i) and the fp32 outputs do not change. Chains (conv -> depthwise -> conv)
are equalized pair by pair, repeated until the scales settle. BatchNorm must be folded (the export
and ONNX Runtime's pre-processing fold it).

ReLU6 (Clip 0..6) commutes with the scaling only where it does not clip: clip(x / s, 0, 6) =
clip(x, 0, 6) / s needs max x <= 6 and max x / s <= 6. AIMET swaps every ReLU6 for a ReLU, which
changes the model; here the pre-activation maxima are measured on the calibration samples, a
channel that reaches the bound is left unscaled and the others get s_i >= max x_i / 6, so the
model's outputs on the calibration data stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.compress import model_file, tensors
from edgekit.compress.tensors import FLOAT
from edgekit.data import Samples

ROUNDS = 20  # pair-by-pair sweeps; chains of three settle in a few


@dataclass
class Pair:
    """Conv1 (its weight and bias initializer names) -> activation -> Conv2 (its weight, and whether
    it is depthwise); BOUND: the activation's upper clip (None: ReLU or none), OUT: Conv1's output,
    and READ: the tensor Conv2 reads (the activation's output, or OUT)."""

    w1: str
    b1: str | None
    w2: str
    depthwise: bool
    bound: float | None
    out: str
    read: str


def pairs(graph) -> list[Pair]:
    """The Conv -> (Relu | Clip(0, hi) | nothing) -> Conv pairs of GRAPH whose tensors between have one
    reader each, with constant weights (Conv2 dense, or depthwise with one filter per channel)."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}

    def only_reader(name: str):
        r = readers.get(name, [])
        return r[0] if len(r) == 1 and name not in outputs else None

    def scalar(name: str) -> float | None:
        if name in inits:
            return float(numpy_helper.to_array(inits[name]).reshape(-1)[0])
        if name in consts:
            return float(numpy_helper.to_array(consts[name].attribute[0].t).reshape(-1)[0])
        return None

    found = []
    for conv1 in graph.node:
        if conv1.op_type != "Conv" or conv1.input[1] not in inits:
            continue
        nxt, bound = only_reader(conv1.output[0]), None
        if nxt is not None and nxt.op_type in ("Relu", "Clip"):
            if nxt.op_type == "Clip":
                lo = scalar(nxt.input[1]) if len(nxt.input) > 1 and nxt.input[1] else None
                bound = scalar(nxt.input[2]) if len(nxt.input) > 2 and nxt.input[2] else None
                if lo != 0 or bound is None:  # scaling keeps only 0 in place
                    continue
            nxt = only_reader(nxt.output[0])
        if (
            nxt is None
            or nxt.op_type != "Conv"
            or nxt.input[1] not in inits
            or nxt.input[1] == conv1.input[1]
        ):
            continue
        group = next((helper.get_attribute_value(a) for a in nxt.attribute if a.name == "group"), 1)
        dims = list(inits[nxt.input[1]].dims)
        depthwise = group > 1 and dims[1] == 1 and dims[0] == group
        w1_dims = list(inits[conv1.input[1]].dims)
        if (group > 1 and not depthwise) or w1_dims[0] != (dims[0] if depthwise else dims[1]):
            continue
        if len(readers[conv1.input[1]]) > 1 or len(readers[nxt.input[1]]) > 1:  # shared weights
            continue
        b1 = conv1.input[2] if len(conv1.input) > 2 and conv1.input[2] in inits else None
        if len(conv1.input) > 2 and conv1.input[2] and b1 is None:
            continue
        pair = Pair(conv1.input[1], b1, nxt.input[1], depthwise, bound, conv1.output[0], nxt.input[0])
        found.append(pair)
    return found


def channel_max(
    model,
    names: list[str],
    calib: Samples,
    fixed: int | None,
    batch: int,
    absolute: bool = False,
    limit: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-channel (axis 1) max (ABSOLUTE: of |x|) of each tensor in NAMES over the calibration
    samples, run in batches whose tensors fit LIMIT bytes (None: BATCH samples)."""
    top: dict[str, np.ndarray] = {}
    for found, _ in tensors.values(model, dict.fromkeys(names, FLOAT), calib, fixed, batch, limit):
        for name, value in found.items():
            value = np.abs(value) if absolute else value
            m = np.moveaxis(value, 1, 0).reshape(value.shape[1], -1).max(1)
            top[name] = np.maximum(top[name], m) if name in top else m
    return top


def equalize(src: Path, out: Path, calib: Samples, fixed: int | None, batch: int) -> dict:
    """Write SRC with every equalizable conv pair equalized to OUT; a summary (pairs found, pairs
    scaled, channels a ReLU6 bound kept unscaled)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    found = pairs(graph)
    inits = {i.name: i for i in graph.initializer}
    w = {
        n: numpy_helper.to_array(inits[n]).astype(np.float64) for p in found for n in (p.w1, p.b1, p.w2) if n
    }
    clipped = [p.out for p in found if p.bound is not None]
    top = channel_max(model, clipped, calib, fixed, batch) if clipped else {}
    held = sum(int((top[p.out] > p.bound).sum()) for p in found if p.bound is not None)
    for _ in range(ROUNDS):
        change = 0.0
        for p in found:
            w1, w2 = w[p.w1], w[p.w2]
            r1 = np.abs(w1).reshape(len(w1), -1).max(1)
            r2 = (
                np.abs(w2).reshape(len(w2), -1).max(1)
                if p.depthwise
                else np.abs(w2).max((0, *range(2, w2.ndim)))
            )
            ok = (r1 > 0) & (r2 > 0)
            s = np.where(ok, np.sqrt(np.where(ok, r1, 1) / np.where(ok, r2, 1)), 1.0)
            if p.bound is not None:  # ReLU6: leave channels that clip; keep the rest below the bound
                x = top[p.out]
                s = np.where(x > p.bound, 1.0, np.maximum(s, x / p.bound))
            s = np.clip(s, 1e-4, 1e4)
            w1 /= s.reshape(-1, *[1] * (w1.ndim - 1))
            if p.b1:
                w[p.b1] /= s
            w2 *= (
                s.reshape(-1, *[1] * (w2.ndim - 1)) if p.depthwise else s.reshape(1, -1, *[1] * (w2.ndim - 2))
            )
            if p.bound is not None:
                top[p.out] = top[p.out] / s
            change = max(change, float(np.abs(np.log(s)).max(initial=0)))
        if change < 1e-3:
            break
    for name, value in w.items():
        dtype = numpy_helper.to_array(inits[name]).dtype
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(dtype), name))
    model_file.save(model, out)
    return {"equalized_pairs": len(found), "relu6_channels_unscaled": held}
