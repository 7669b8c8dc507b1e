"""Constant scales and shifts beside a convolution, folded into its weights and bias. PaddlePaddle's
PP-LCNetV3 (PP-OCRv5's detector and recognizer) puts a learnable affine block, `x * s + b` with
one-element `s` and `b`, after each convolution and each activation; ONNX Runtime's Conv+Mul and
Conv+Add fusions refuse a `[1]`-shaped constant, so its quantizer rounded the tensor, the product and
the sum in turn: three 8-bit roundings where one is due. Folded, the convolutions compute the same
values (up to fp32 rounding) and each tensor is rounded once.

After a convolution (into its output channels) every Mul/Div/Add/Sub by a constant folds, and so
does an inference BatchNormalization (ORT fuses one after a Conv, not after a ConvTranspose: a
DBNet head's, PP-OCRv5's detector's, upsampling stays float between two roundings). Before one
(into its input channels) a scale always folds (zero padding scales too); a shift only into a
convolution without padding (a pointwise one), since the padded border would not be shifted; in
front of a padded one, `x * s + b` becomes `x + b / s` with `s` in the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import activation_islands, model_file, outer_reads

LAYERS = {"Conv": 0, "ConvTranspose": 1}  # the weight's output-channel axis


def fold(src: Path, dst: Path) -> int:
    """Write SRC to DST with each Mul/Div/Add/Sub of a constant (one value, or one per channel) or
    BatchNormalization that only reads a Conv or ConvTranspose (of one group) folded into it, and
    each that only a Conv reads folded into that Conv where it is exact; how many (0: DST not
    written)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    keep = {o.name for o in graph.output}  # names that must stay: outputs, subgraphs' reads
    keep |= outer_reads.branch_reads(graph)
    readers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    producer = {o: n for n in graph.node for o in n.output}
    own = {name for name, nodes in readers.items() if name in inits and len(nodes) == 1}
    folded, drop, added, replaced = 0, set(), [], set()
    # a GELU's closing `* 0.5` stays where it is: folded away, the island is no GELU ORT can fuse
    fixed = {id(graph.node[k]) for k in activation_islands.identified(model)}

    def free(node) -> bool:
        return id(node) not in drop and id(node) not in fixed

    def only_reader(name: str):
        nodes = readers.get(name, [])
        return nodes[0] if len(nodes) == 1 and name not in keep and free(nodes[0]) else None

    for conv in graph.node:
        if conv.op_type not in LAYERS or not _own_weights(conv, inits, own):
            continue
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float32)
        axis = LAYERS[conv.op_type]  # the weight's output-channel axis
        if axis and group != 1:
            continue
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32) if len(conv.input) > 2 else None
        b = np.zeros(w.shape[axis], np.float32) if b is None else b
        before = folded
        while (nxt := only_reader(conv.output[0])) and (step := _affine(nxt, inits, w.shape[axis], w.ndim)):
            scale, shift, _ = step  # into the output channels: weights and bias
            w, b = w * scale.reshape(-1, *[1] * (w.ndim - 1 - axis)), b * scale + shift
            conv.output[0] = nxt.output[0]
            drop.add(id(nxt))
            replaced.update(nxt.input)
            folded += 1
        while conv.op_type == "Conv" and (prev := producer.get(conv.input[0])) and free(prev):
            step = _affine(prev, inits, w.shape[1] * group, w.ndim) if only_reader(conv.input[0]) else None
            if step is None:
                break
            scale, shift, x = step
            if not shift.any():  # a scale: zero padding scales too
                w = w * _per_weight(scale, w.shape, group)
            elif _unpadded(conv):  # a shift: exact only where no border is padded
                b = b + np.sum(w * _per_weight(shift, w.shape, group), axis=tuple(range(1, w.ndim)))
                w = w * _per_weight(scale, w.shape, group)
            elif np.all(scale == 1) and (inner := producer.get(x)) and free(inner) and only_reader(x):
                # x * s + b before a padded Conv: x + b / s, with s in the weights
                step = _affine(inner, inits, w.shape[1] * group, w.ndim)
                if step is None or step[1].any() or not step[0].all():
                    break
                name = f"{prev.output[0]}_edgekit_shift"
                added.append(
                    numpy_helper.from_array((shift / step[0]).reshape(1, -1, *[1] * (w.ndim - 2)), name)
                )
                replaced.update(prev.input)
                prev.op_type, prev.input[:] = "Add", [step[2], name]
                del prev.attribute[:]
                w = w * _per_weight(step[0], w.shape, group)
                drop.add(id(inner))
                replaced.update(inner.input)
                folded += 1
                break
            else:
                break
            conv.input[0] = x
            readers[x] = [conv]
            drop.add(id(prev))
            replaced.update(prev.input)
            folded += 1
        if folded > before:
            replaced.update(conv.input[1:])
            stem = f"{conv.name or conv.input[1]}_edgekit_affine"
            added += [numpy_helper.from_array(w, f"{stem}_w"), numpy_helper.from_array(b, f"{stem}_b")]
            conv.input[1:] = [f"{stem}_w", f"{stem}_b"]
    if not folded:
        return 0
    outer_reads.replace_nodes(graph, [n for n in graph.node if id(n) not in drop], replaced, added)
    model_file.save(model, dst)
    return folded


def _own_weights(conv, inits: dict, own: set[str]) -> bool:
    """CONV's weight (and bias) are float initializers only it reads."""
    from onnx import TensorProto

    names = [conv.input[1], *conv.input[2:3]]
    return all(n in own and inits[n].data_type == TensorProto.FLOAT for n in names)


def _unpadded(conv) -> bool:
    """CONV pads no border: no pads, all-zero pads, or auto_pad VALID."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    return auto == "VALID" or (auto == "NOTSET" and not any(attrs.get("pads", [])))


def _per_weight(value: np.ndarray, shape: tuple, group: int) -> np.ndarray:
    """VALUE (one per input channel) laid on a Conv weight of SHAPE [out, in / group, ...]: output
    channel o of group g reads input channel g * (in / group) + i at position i."""
    out, per = shape[0], shape[1]
    index = (np.arange(out)[:, None] // (out // group)) * per + np.arange(per)[None]
    return value[index].reshape(out, per, *[1] * (len(shape) - 2)).astype(np.float32)


def _affine(node, inits: dict, channels: int, rank: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(scale, shift, x), one value per channel each, where NODE computes x * scale + shift of one
    tensor x (of RANK, CHANNELS on axis 1) with float constants: an inference BatchNormalization, or a
    Mul/Div/Add/Sub by a constant of one value or one per channel ([C, 1, 1], [1, C, 1, 1]) that does
    not widen x."""
    from onnx import TensorProto, helper, numpy_helper

    def constant(name: str) -> np.ndarray | None:
        init = inits.get(name)
        return None if init is None or init.data_type != TensorProto.FLOAT else numpy_helper.to_array(init)

    ones = np.ones(channels, np.float32)
    if node.op_type == "BatchNormalization":
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        params = [constant(n) for n in node.input[1:]]
        if len(params) != 4 or len(node.output) != 1 or attrs.get("training_mode", 0):
            return None
        if any(p is None or p.shape != (channels,) for p in params):
            return None
        gamma, beta, mean, var = (p.astype(np.float64) for p in params)
        scale = gamma / np.sqrt(var + attrs.get("epsilon", 1e-5))
        return scale.astype(np.float32), (beta - mean * scale).astype(np.float32), node.input[0]
    if node.op_type not in ("Mul", "Div", "Add", "Sub") or len(node.input) != 2:
        return None
    found = [k for k, name in enumerate(node.input) if constant(name) is not None]
    if len(found) != 1 or (node.op_type in ("Div", "Sub") and found != [1]):
        return None
    value = constant(node.input[found[0]]).astype(np.float32)
    if value.ndim > rank:
        return None
    if value.size == 1:
        per_channel = np.full(channels, value.reshape(()), np.float32)
    else:  # C on the tensor's channel axis, 1 elsewhere
        shape = (1,) * (rank - value.ndim) + value.shape
        if shape[1] != channels or any(d != 1 for k, d in enumerate(shape) if k != 1):
            return None
        per_channel = value.reshape(channels)
    if node.op_type == "Div" and not per_channel.all():
        return None
    x = node.input[1 - found[0]]
    return {
        "Mul": (per_channel, 0 * ones, x),
        "Div": (np.float32(1) / per_channel, 0 * ones, x),
        "Add": (ones, per_channel, x),
        "Sub": (ones, -per_channel, x),
    }[node.op_type]
