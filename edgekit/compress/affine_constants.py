"""Constant scales and shifts beside a convolution, folded into its weights and bias. PaddlePaddle's
PP-LCNetV3 (PP-OCRv5's detector and recognizer) puts a learnable affine block, `x * s + b` with
one-element `s` and `b`, after each convolution and each activation; ONNX Runtime's Conv+Mul and
Conv+Add fusions refuse a `[1]`-shaped constant, so its quantizer rounded the tensor, the product and
the sum in turn: three 8-bit roundings where one is due. Folded, the convolutions compute the same
values (up to fp32 rounding) and each tensor is rounded once.

After a convolution (into its output channels) every Mul/Div/Add/Sub by a constant folds. Before one
(into its input channels) a scale always folds (zero padding scales too); a shift only into a
convolution without padding (a pointwise one), since the padded border would not be shifted; in
front of a padded one, `x * s + b` becomes `x + b / s` with `s` in the weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import activation_islands, model_file, outer_reads

SCALES, SHIFTS = ("Mul", "Div"), ("Add", "Sub")  # Div and Sub with the constant second


def fold(src: Path, dst: Path) -> int:
    """Write SRC to DST with each Mul/Div/Add/Sub of a constant (one value, or one per channel) that
    only a Conv reads or that only reads a Conv folded into that Conv; how many (0: DST not written)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    keep = {o.name for o in graph.output}  # names that must stay: outputs, subgraphs' reads
    keep |= {r for n in graph.node for g in outer_reads.subgraphs(n) for r in outer_reads.reads(g)}
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
        if conv.op_type != "Conv" or not _own_weights(conv, inits, own):
            continue
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float32)
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32) if len(conv.input) > 2 else None
        b = np.zeros(w.shape[0], np.float32) if b is None else b
        before = folded
        while (nxt := only_reader(conv.output[0])) and (step := _step(nxt, inits, w.shape[0], w.ndim)):
            op, value, _ = step
            if op in SCALES:  # into the output channels: weights and bias
                factor = value if op == "Mul" else np.float32(1) / value
                w, b = w * factor.reshape(-1, *[1] * (w.ndim - 1)), b * factor
            else:
                b = b + (value if op == "Add" else -value)
            conv.output[0] = nxt.output[0]
            drop.add(id(nxt))
            replaced.update(nxt.input)
            folded += 1
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        channels = w.shape[1] * group
        while (prev := producer.get(conv.input[0])) and free(prev) and only_reader(conv.input[0]):
            step = _step(prev, inits, channels, w.ndim)
            if step is None:
                break
            op, value, x = step
            gains = _per_weight(value, w.shape, group)
            if op in SCALES:  # into the input channels: zero padding scales too
                w = w * (gains if op == "Mul" else np.float32(1) / gains)
            elif _unpadded(conv):  # a shift: exact only where no border is padded
                b = b + (1 if op == "Add" else -1) * np.sum(w * gains, axis=tuple(range(1, w.ndim)))
            elif (scale := producer.get(x)) and free(scale) and only_reader(x):
                # x * s + b before a padded Conv: x + b / s, with s in the weights
                inner = _step(scale, inits, channels, w.ndim)
                if inner is None or inner[0] != "Mul":
                    break
                name = f"{prev.output[0]}_edgekit_shift"
                added.append(
                    numpy_helper.from_array((value / inner[1]).reshape(1, -1, *[1] * (w.ndim - 2)), name)
                )
                replaced.update(prev.input[1:] if prev.input[0] == x else prev.input[:1])
                prev.input[:] = [inner[2], name]
                w = w * _per_weight(inner[1], w.shape, group)
                drop.add(id(scale))
                replaced.update(scale.input)
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


def _step(node, inits: dict, channels: int, rank: int) -> tuple[str, np.ndarray, str] | None:
    """(op, one value per channel, the tensor it takes) where NODE is a Mul/Div/Add/Sub of a tensor
    and a float constant of one value or one per channel ([C, 1, 1], [1, C, 1, 1]) that does not
    widen the tensor (of RANK, CHANNELS on axis 1)."""
    from onnx import TensorProto, numpy_helper

    if node.op_type not in (*SCALES, *SHIFTS) or len(node.input) != 2:
        return None
    constant = [k for k, name in enumerate(node.input) if name in inits]
    if len(constant) != 1 or (node.op_type in ("Div", "Sub") and constant != [1]):
        return None
    const = inits[node.input[constant[0]]]
    if const.data_type != TensorProto.FLOAT:
        return None
    value = numpy_helper.to_array(const).astype(np.float32)
    if value.ndim > rank:
        return None
    if value.size == 1:
        per_channel = np.full(channels, value.reshape(()), np.float32)
    else:  # C on the tensor's channel axis, 1 elsewhere
        shape = (1,) * (rank - value.ndim) + value.shape
        if shape[1] != channels or any(d != 1 for k, d in enumerate(shape) if k != 1):
            return None
        per_channel = value.reshape(channels)
    if node.op_type in ("Div", "Mul") and np.any(per_channel == 0):
        return None  # a zero scale cannot be divided back out of a shift
    return node.op_type, per_channel, node.input[1 - constant[0]]
