"""A picture input normalized per channel, quantized without rounding: its 8-bit levels, not a grid
laid over them.

A photo is 8-bit pixels; normalized with a mean and std per channel (torchvision's and timm's
ImageNet convention) each channel takes at most 256 values, evenly spaced, but each channel on its
own grid (spacing 1 / (255 std), origin -mean / std). One INT8 scale per tensor cannot hold three
grids: MobileNetV2's input quantized by ORT's calibrated scale moved every pixel by up to half a
level and cost 1.5 points of top-1 agreement with fp32 on 2000 photo crops, everything else held
fixed (fp32 fed that input kept 98.9 %). ORT's quantizer and NNCF quantize the input on one grid.

Where a graph input's calibration values lie on such a lattice per channel and a convolution (of
one group, maybe behind a Transpose) is its only reader, edgekit hands the convolution the levels
themselves: x -> Mul(1 / step) -> Add(level of zero - Z) -> levels less Z -> the convolution with
the step in its weights and the rest in its bias, quantized at scale 1, zero point Z: exactly. Z is
the mean of the channels' levels of zero (ImageNet's 123.7, 116.3, 103.5: Z = 114), so the levels
are about centred, which AdaRound needs (it fits each layer's rounding to its inputs' second
moments: levels 0..255 are mostly their mean, whose error bias correction removes anyway, and
MobileNetV2's stem rounded for the mean lost more than the exact input gained: KL divergence from
fp32 on 2000 crops 0.0113 without the levels, 0.0136 uncentred). Where the convolution pads, its
border now reads level Z in every channel, a grey, not each channel's level of zero (the mean
colour): fp32 MobileNetV2 so padded kept 99.7 % top-1 agreement with itself (KL 0.00003), where its
input rounded by one scale kept 98.9 % (KL 0.0007); a channel whose zero lies more than BORDER
levels from Z is not folded there. The Mul, Add and QuantizeLinear then become one per-channel
QuantizeLinear (scale = step, zero point = the channel's level of zero), as fast as the per-tensor
one; so only where each channel's zero is a level clear of a tie (mean and std 0.5 put it at 127.5:
the Mul and Add would stay, in float, and on three OCR models they gained nothing). ONNX Runtime
only. Inputs whose channels share one grid with a whole-level origin (p / 128 - 1 of
EfficientNet-Lite) are exact on one scale already and stay as they are. Measured in
docs/guide/quantize.md: MobileNetV2's top-1 agreement with fp32 on 2000 photo crops 93.2 -> 94.0 %
(KL 0.0113 -> 0.0101), the same INT8 time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.compress import graph_index, model_file
from edgekit.data import Samples

SUFFIX = "_edgekit_levels"  # the levels tensor's name: the range search leaves its range as it is
LEVELS = 256
BORDER = 32  # levels: how far a channel's zero may lie from the zero point where the conv pads
MIN_VALUES = 32  # fewer distinct values per channel tell no grid apart from a few constants
TOLERANCE = 1e-3  # of a step: how far from its level a value may lie (fp32's rounding of the norm)
TIE = 0.02  # how near half a level a channel's zero may lie for one QuantizeLinear to round right
VALUES = 1 << 20  # values per channel looked at (an even subsample beyond)


@dataclass(frozen=True)
class Grid:
    """A channel's values: origin + step * level, level 0..255."""

    step: float
    origin: float


def grids(values: np.ndarray, axis: int) -> list[Grid] | None:
    """Each channel's grid (along AXIS) where every value of VALUES lies on one of at most 256 evenly
    spaced levels; None where any channel does not. The lowest value is level 0 where the values
    span all 256 levels, else the span is centred in them."""
    moved = np.moveaxis(np.asarray(values), axis, 0).reshape(values.shape[axis], -1)
    found = []
    for row in moved:
        row = row[:: max(1, row.size // VALUES)]
        seen = np.unique(row.astype(np.float64))
        if seen.size < MIN_VALUES or seen.size > LEVELS or not np.isfinite(seen).all():
            return None
        # the span over its whole number of smallest gaps: fp32's rounding of one gap, 255 times
        # over, would put the top level off its place
        span = float(seen[-1] - seen[0])
        step = span / max(1, round(span / float(np.diff(seen).min())))
        level = (seen - seen[0]) / step
        if np.abs(level - np.round(level)).max() > TOLERANCE or round(level[-1]) >= LEVELS:
            return None
        below = (LEVELS - 1 - round(level[-1])) // 2
        found.append(Grid(step, float(seen[0]) - below * step))
    return found


def _one_grid(found: list[Grid]) -> bool:
    """Whether one scale and zero point quantize every channel of FOUND exactly."""
    first = found[0]
    same = all(abs(g.step - first.step) <= TOLERANCE * first.step for g in found)
    aligned = all(abs(g.origin - first.origin) <= TOLERANCE * first.step for g in found)
    whole = abs(first.origin / first.step - round(first.origin / first.step)) <= TOLERANCE
    return same and aligned and whole


def fold(src: Path, dst: Path, calib: Samples) -> dict[str, dict]:
    """Write SRC to DST with each graph input whose CALIB values lie on a lattice per channel, and
    that one convolution reads, handed to it as levels (module doc); per input folded, its channels,
    the levels tensor's name and zero point ({}: DST not written)."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    inits, _, readers, outputs = graph_index.index(graph)
    done: dict[str, dict] = {}
    for inp in graph.input:
        if inp.name in inits or inp.name not in calib.inputs or inp.name in outputs:
            continue
        x = np.asarray(calib.inputs[inp.name])
        reads = [n for n in readers.get(inp.name, []) if n.op_type != "Shape"]
        if x.dtype != np.float32 or x.ndim != 4 or len(reads) != 1:
            continue
        head, axis = reads[0], 1
        if head.op_type == "Transpose":  # an NHWC input: the channels are where the perm takes axis 1
            perm = next((list(a.ints) for a in head.attribute if a.name == "perm"), [])
            if len(perm) != 4 or len(readers.get(head.output[0], [])) != 1 or head.output[0] in outputs:
                continue
            axis, head = perm[1], readers[head.output[0]][0]
        conv = head
        if not _foldable(conv, inits, readers, x.shape[axis]):
            continue
        found = grids(x, axis)
        if found is None or _one_grid(found):
            continue
        # the level of x = 0 per channel; the levels' zero point is their mean, where the convolution
        # pads: its padded border reads that level in every channel
        zeros = np.array([-g.origin / g.step for g in found])
        # one per-channel QuantizeLinear computes the levels where each channel's zero is a level
        # and lies clear of half a level: else (mean and std 0.5: 127.5) a Mul and an Add in float
        # would, for no measured gain (docs/guide/quantize.md)
        near = np.round(zeros)
        if np.abs(np.abs(zeros - near) - 0.5).min() < TIE or near.min() < 0 or near.max() >= LEVELS:
            continue
        zero = int(np.clip(np.round(zeros.mean()), 0, LEVELS - 1))
        if _padded(conv) and np.abs(zeros - zero).max() > BORDER:
            continue
        rewritten = _levels(graph, conv, found, inits, inp.name, zero)
        del graph.node[:]
        graph.node.extend(rewritten)
        done[inp.name] = {"channels": len(found), "levels": conv.input[0], "zero_point": zero}
    if not done:
        return {}
    model_file.save(model, dst)
    return done


def _foldable(conv, inits: dict, readers: dict, channels: int) -> bool:
    """Whether CONV is a 2-D convolution of one group with its own constant weights (and bias) over
    CHANNELS input channels, its padding given as pads (not auto_pad SAME_*)."""
    from onnx import numpy_helper

    if conv.op_type != "Conv" or conv.input[1] not in inits or len(readers.get(conv.input[1], [])) != 1:
        return False
    if (
        len(conv.input) > 2
        and conv.input[2]
        and (conv.input[2] not in inits or len(readers.get(conv.input[2], [])) != 1)
    ):
        return False
    attrs = {a.name: a for a in conv.attribute}
    if attrs.get("group") and attrs["group"].i != 1:
        return False
    if attrs.get("auto_pad") and attrs["auto_pad"].s not in (b"NOTSET", b"VALID"):
        return False
    w = numpy_helper.to_array(inits[conv.input[1]])
    return w.ndim == 4 and w.shape[1] == channels


def _padded(conv) -> bool:
    """Whether CONV pads its input."""
    return any(a.name == "pads" and any(a.ints) for a in conv.attribute)


def _levels(graph, conv, found: list[Grid], inits: dict, name: str, zero: int) -> list:
    """GRAPH's nodes with CONV reading its input as levels less ZERO (module doc): its weights and
    bias rewritten in INITS' tensors, the Mul and Add before it."""
    from onnx import helper, numpy_helper

    step = np.array([g.step for g in found], np.float64)
    origin = np.array([g.origin for g in found], np.float64)
    w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
    b = np.zeros(w.shape[0]) if len(conv.input) < 3 or not conv.input[2] else None
    if b is None:
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
    # x = origin + step * (level - ZERO + ZERO): the weights take the step, the bias the rest
    b = b + (w * (origin + zero * step).reshape(1, -1, 1, 1)).sum((1, 2, 3))
    w = w * step.reshape(1, -1, 1, 1)
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array(w.astype(np.float32), conv.input[1]))
    bias = conv.input[2] if len(conv.input) > 2 and conv.input[2] else f"{conv.name or name}_edgekit_bias"
    if bias in inits:
        inits[bias].CopyFrom(numpy_helper.from_array(b.astype(np.float32), bias))
    else:
        graph.initializer.append(numpy_helper.from_array(b.astype(np.float32), bias))
        conv.input[:] = [*conv.input[:2], bias]
    tag = f"{name}{SUFFIX}"
    for k, v in ((f"{tag}_inv_step", 1 / step), (f"{tag}_offset", -origin / step - zero)):
        graph.initializer.append(numpy_helper.from_array(v.reshape(1, -1, 1, 1).astype(np.float32), k))
    nodes = [
        helper.make_node("Mul", [conv.input[0], f"{tag}_inv_step"], [f"{tag}_scaled"], name=f"{tag}_mul"),
        helper.make_node("Add", [f"{tag}_scaled", f"{tag}_offset"], [tag], name=f"{tag}_add"),
    ]
    conv.input[0] = tag
    at = list(graph.node).index(conv)
    return [*graph.node[:at], *nodes, *graph.node[at:]]


def nodes(done: dict[str, dict]) -> list[str]:
    """The names of the nodes FOLD put before each convolution: they stay float (ORT's quantizer
    would quantize the picture they read)."""
    return [f"{name}{SUFFIX}_{op}" for name in done for op in ("mul", "add")]


def overrides(done: dict[str, dict]) -> dict[str, list[dict]]:
    """TensorQuantOverrides for ORT's quantizer: each levels tensor at scale 1 and its zero point."""
    return {
        d["levels"]: [{"scale": np.array(1.0, np.float32), "zero_point": np.array(d["zero_point"], np.uint8)}]
        for d in done.values()
    }


def fuse(path: Path, done: dict[str, dict]) -> int:
    """PATH (a QDQ model FOLD's levels went through) with each Mul -> Add -> QuantizeLinear of the
    levels written as one per-channel QuantizeLinear (scale: the step; zero point: the level of
    zero), which rounds every level to itself; how many (none before opset 13, or where the levels'
    convolution was left float). Not where the levels read a Transpose (an NHWC input): ONNX Runtime
    moves the Transpose after the QuantizeLinear, whose channel axis is then the last, and its
    per-channel kernel took 5.2 ms a 224x224 picture there (MobileNetV2 NHWC: 1.44x fp32's time);
    the Mul and Add before one scale move with the Transpose and cost about 0.3 ms each (0.63x)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    if model_file.default_opset(model) < 13:  # per-channel QuantizeLinear came with opset 13
        return 0
    graph = model.graph
    inits, producer, readers, _ = graph_index.index(graph)
    by_name = {n.name: n for n in graph.node}
    fused, drop, unused = 0, set(), set()
    for name, d in done.items():
        tag = f"{name}{SUFFIX}"
        mul, add = by_name.get(f"{tag}_mul"), by_name.get(f"{tag}_add")
        quantizers = readers.get(tag, [])
        if mul is None or add is None or len(quantizers) != 1 or quantizers[0].op_type != "QuantizeLinear":
            continue
        if getattr(producer.get(mul.input[0]), "op_type", None) == "Transpose":
            continue
        inv = numpy_helper.to_array(inits[mul.input[1]]).astype(np.float64).reshape(-1)
        offset = numpy_helper.to_array(inits[add.input[1]]).astype(np.float64).reshape(-1)
        # round(x / step) + zero = level: fold took only channels whose zero lies clear of a tie
        zero = np.round(offset) + d["zero_point"]
        q = quantizers[0]
        scale, point = f"{tag}_channel_step", f"{tag}_channel_zero"  # not ORT's names
        graph.initializer.extend(
            [
                numpy_helper.from_array((1 / inv).astype(np.float32), scale),
                numpy_helper.from_array(zero.astype(np.uint8), point),
            ]
        )
        unused |= {mul.input[1], add.input[1], *q.input[1:3]}
        q.input[:] = [mul.input[0], scale, point]
        del q.attribute[:]
        q.attribute.append(helper.make_attribute("axis", 1))
        drop |= {id(mul), id(add)}
        fused += 1
    if fused:
        kept = [n for n in graph.node if id(n) not in drop]
        del graph.node[:]
        graph.node.extend(kept)
        read = {name for n in graph.node for name in n.input}
        left = [i for i in graph.initializer if i.name not in unused or i.name in read]
        del graph.initializer[:]
        graph.initializer.extend(left)
        model_file.save(model, path)
    return fused
