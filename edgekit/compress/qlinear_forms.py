"""A QDQ model's float elementwise ops written as ones ONNX Runtime runs in its INT8 kernels.

ORT fuses DequantizeLinear -> op -> QuantizeLinear into an INT8 kernel only for the ops it has
one for (Add, Mul, GlobalAveragePool, ...); any other op runs in float between a DequantizeLinear
and a QuantizeLinear, three passes over the tensor. A MobileNetV3's INT8 model ran 1.22x its fp32
time in ORT (random weights, 2 threads; its fp32 convolutions fuse the Hardswish). Three forms
compute the same with the ops ORT fuses (ORT placement only: OpenVINO fuses the originals):
- a HardSigmoid (max(0, min(1, alpha x + beta))) whose quantizer's levels span [0, <= 1]: an Add of
  beta / alpha whose quantizer's scale is divided by alpha, the saturation of its levels the clip
  (a QLinearAdd; its reader dequantizes the same integers with the old scale);
- a ReduceMean over every spatial axis, dims kept: GlobalAveragePool (QLinearGlobalAveragePool);
  where it is a classifier's pooling, read by a Reshape, Flatten or Squeeze whose output is
  quantized, its output quantized to those levels before the reshape (ORT moves the bytes);
- a Div or Mul by a positive scalar constant (float, or dequantized: ORT quantizes a Mul's) between
  a quantizer read by nothing else and the next: gone, its constant folded into that quantizer's
  scale (paddle2onnx's Hardswish ends in / 6): one rounding fewer.
The first two give ORT's outputs bit for bit on that MobileNetV3, which then ran 0.87x fp32's time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import graph_index, model_file, outer_reads

TOLERANCE = 1e-6  # relative: a scale of 1/255 stored in float32 spans [0, 1 + 6e-8]
RESHAPES = ("Reshape", "Flatten", "Squeeze")  # they move values: quantized before or after, the same


def rewrite(path: Path) -> dict[str, int]:
    """Rewrite the QDQ model at PATH in place; how many ops of each form (empty: PATH untouched)."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inits, producer, readers, hidden = graph_index.index(graph)
    # shape inference only where a ReduceMean needs its input's rank (it reads the whole graph)
    ranks = model_file.ranks(model) if any(n.op_type == "ReduceMean" for n in graph.node) else {}

    def only_reader(tensor: str, op: str):
        """The one node reading TENSOR where it is an OP and nothing hidden reads TENSOR."""
        found = readers.get(tensor, [])
        if tensor in hidden or len(found) != 1 or found[0].op_type != op:
            return None
        return found[0]

    added, dropped, counts = [], set(), {}  # new initializers; ids of the nodes removed
    before: dict[int, list] = {}  # id of a node -> the nodes now written before it
    for node in list(graph.node):
        inits.update((i.name, i) for i in added if i.name not in inits)  # the scales written so far
        dq = producer.get(node.input[0]) if node.input else None
        if dq is None or dq.op_type != "DequantizeLinear" or not node.output:
            continue
        q, reshape = only_reader(node.output[0], "QuantizeLinear"), None
        if q is None and node.op_type == "ReduceMean":  # a classifier's pooling, then its flattening
            reshape = next(filter(None, (only_reader(node.output[0], op) for op in RESHAPES)), None)
            q = reshape and only_reader(reshape.output[0], "QuantizeLinear")
        if q is None or levels(q, inits) is None or levels(dq, inits) is None:
            continue
        if node.op_type == "HardSigmoid" and (offset := _hard_sigmoid(node, dq, q, inits, added)):
            before[id(node)] = [offset]
            counts["hard_sigmoid_as_add"] = counts.get("hard_sigmoid_as_add", 0) + 1
        elif node.op_type == "ReduceMean" and _spatial_mean(node, inits, ranks.get(node.input[0])):
            if reshape is not None:
                before[id(reshape)] = _quantized_before(reshape, q)
                counts["quantized_before_reshape"] = counts.get("quantized_before_reshape", 0) + 1
            counts["mean_as_global_pool"] = counts.get("mean_as_global_pool", 0) + 1
        elif (
            node.op_type in ("Div", "Mul")
            and (first := producer.get(dq.input[0])) is not None
            and first.op_type == "QuantizeLinear"
            and levels(first, inits) == levels(dq, inits)  # a pair: DQ gives back what FIRST took
            and only_reader(first.output[0], "DequantizeLinear") is dq
            and only_reader(dq.output[0], node.op_type) is node
            and (constant := graph_index.scalar(node.input[1], inits, producer)) is not None
            and _folded(first, node, q, constant, inits, added)
        ):
            dropped.update(id(n) for n in (dq, node, q))
            if only_reader(node.input[1], node.op_type) is node and node.input[1] in producer:
                dropped.add(id(producer[node.input[1]]))  # the constant's own DequantizeLinear
            producer[q.output[0]] = first
            counts["scalar_divide_folded"] = counts.get("scalar_divide_folded", 0) + 1
    if not counts:
        return {}
    nodes = []
    for n in graph.node:
        nodes += [m for m in (*before.get(id(n), ()), n) if id(m) not in dropped]
    outer_reads.replace_nodes(graph, nodes, set(inits), added)
    live = {t for n in nodes for t in n.output}
    kept = [v for v in graph.value_info if v.name in live]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    model_file.save(model, path)
    return counts


def levels(node, inits: dict) -> tuple[float, int, np.dtype] | None:
    """A per-tensor Q/DQ NODE's scale, zero point and integer type (None: not constant, per channel)."""
    from onnx import numpy_helper

    if len(node.input) < 3 or not {node.input[1], node.input[2]} <= inits.keys():
        return None
    scale, zero = (numpy_helper.to_array(inits[n]) for n in node.input[1:3])
    if scale.size != 1 or zero.size != 1 or zero.dtype not in (np.uint8, np.int8):
        return None
    return float(scale.reshape(())), int(zero.reshape(())), zero.dtype


def _like(value: float, node, inits: dict) -> np.ndarray:
    """VALUE as a scale of the Q/DQ NODE's type (float32, or float16 in a half-precision graph)."""
    from onnx import numpy_helper

    return np.array(value, numpy_helper.to_array(inits[node.input[1]]).dtype)


def _constant(name: str, value: np.ndarray, dtype: np.dtype, added: list):
    """The DequantizeLinear whose output NAME is exactly VALUE (a scale-typed scalar), from one DTYPE
    integer (its constants go to ADDED): ORT fuses only a binary op whose both inputs are dequantized."""
    from onnx import helper, numpy_helper

    added += [
        numpy_helper.from_array(np.array(1, dtype), f"{name}_q"),
        numpy_helper.from_array(value, f"{name}_scale"),
        numpy_helper.from_array(np.array(0, dtype), f"{name}_zero"),
    ]
    return helper.make_node(
        "DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zero"], [name], name=name
    )


def _hard_sigmoid(node, dq, q, inits: dict, added: list):
    """NODE (a HardSigmoid between DQ and Q) as Add(x, beta / alpha) where Q's levels clip as it does:
    the DequantizeLinear of beta / alpha it reads (None: left as it is)."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    scale, zero, dtype = levels(q, inits)
    info = np.iinfo(dtype)
    # the levels must start at 0 and end at or below 1, the clip HardSigmoid applies
    if alpha <= 0 or beta <= 0 or zero != info.min or scale * (info.max - zero) > 1 + TOLERANCE:
        return None
    if levels(dq, inits)[2] != dtype:  # QLinearAdd reads and writes one integer type
        return None
    stem = f"{node.name or node.output[0]}_edgekit_as_add"
    offset = _constant(f"{stem}_offset", _like(beta / alpha, dq, inits), dtype, added)
    node.op_type = "Add"
    del node.attribute[:]
    node.input.append(offset.output[0])
    added.append(numpy_helper.from_array(_like(scale / alpha, q, inits), f"{stem}_scale"))
    q.input[1] = f"{stem}_scale"
    return offset


def _spatial_mean(node, inits: dict, rank: int | None) -> bool:
    """NODE (a ReduceMean) as GlobalAveragePool where it averages every axis after the channels and
    keeps them."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1] in inits:  # opset 18: an input
        axes = numpy_helper.to_array(inits[node.input[1]]).tolist()
    if not rank or rank < 3 or not axes or attrs.get("keepdims", 1) != 1:
        return False
    if sorted(a % rank for a in axes) != list(range(2, rank)):
        return False
    node.op_type = "GlobalAveragePool"
    del node.attribute[:]
    del node.input[1:]
    return True


def _quantized_before(reshape, q) -> list:
    """The Q/DQ pair of Q's levels that RESHAPE (read by Q) now reads its input through."""
    from onnx import helper

    stem = f"{reshape.name or reshape.output[0]}_edgekit_input"
    pair = [
        helper.make_node(
            "QuantizeLinear", [reshape.input[0], *q.input[1:3]], [f"{stem}_q"], name=f"{stem}_q"
        ),
        helper.make_node("DequantizeLinear", [f"{stem}_q", *q.input[1:3]], [f"{stem}_dq"], name=f"{stem}_dq"),
    ]
    reshape.input[0] = f"{stem}_dq"
    return pair


def _folded(first, node, q, constant: float, inits: dict, added: list) -> bool:
    """NODE (a Div or Mul by CONSTANT, where positive) removed: FIRST quantizes to Q's levels with the
    constant in its scale and writes Q's output."""
    from onnx import numpy_helper

    scale, _, dtype = levels(q, inits)
    if not constant > 0 or levels(first, inits)[2] != dtype:
        return False
    stem = f"{node.name or node.output[0]}_edgekit_folded"
    folded = scale * constant if node.op_type == "Div" else scale / constant
    added.append(numpy_helper.from_array(_like(folded, q, inits), f"{stem}_scale"))
    first.input[1], first.input[2] = f"{stem}_scale", q.input[2]
    first.output[0] = q.output[0]
    return True
