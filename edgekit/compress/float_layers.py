"""Layers a QDQ model leaves fp32 run fp32 in ONNX Runtime: float weights and a float input.

ORT's quantizer (`nodes_to_exclude`) leaves an excluded layer reading the DequantizeLinear that
its other readers share, so a layer the mixed-precision search kept fp32 still saw INT8 input, and
worse: ORT's WeightBiasQuantization graph optimization (on at every optimization level but none)
gives per-tensor INT8 weights to any float Conv, ConvTranspose or Gemm that reads a per-tensor
DequantizeLinear and writes, through at most a Relu or Clip, into a QuantizeLinear. After the
activation equalization (per-channel gains) one such layer raised EfficientNet-Lite1's KL
divergence from fp32 nine-fold (0.022 -> 0.20; top-1 agreement 86 -> 71 % on 100 crops).

edgekit has such a layer read the float tensor before the Q/DQ pair (as NNCF's ignored scope
means). Where the quantizer folded a Relu or Clip into that Q's saturation (its producer writes the
activation's output name with the activation gone), the layer reads a copy of the activation on it.
Where neither holds, the layer gets a DequantizeLinear of its own with the same scale and zero
point repeated per channel: the same INT8 input, and ORT leaves its weights fp32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import model_file

WEIGHTED = ("Conv", "ConvTranspose", "Gemm")  # the ops ORT's WeightBiasQuantization rewrites
FOLDED = ("Relu", "Clip")  # activations ORT's quantizer folds into the next Q's range


def _channels(node, weight) -> tuple[int, int] | None:
    """The axis of NODE's input 0 that its WEIGHT (an initializer) reduces over, and its length."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    dims = list(weight.dims)
    if node.op_type == "Conv" and len(dims) >= 3:
        return 1, dims[1] * attrs.get("group", 1)
    if node.op_type == "ConvTranspose" and len(dims) >= 3:
        return 1, dims[0]
    if node.op_type == "Gemm" and len(dims) == 2:
        return (0 if attrs.get("transA", 0) else 1), dims[1 if attrs.get("transB", 0) else 0]
    return None


def restore(path: Path, source: Path) -> dict[str, int]:
    """Rewrite PATH (a QDQ ONNX file quantized from SOURCE) so that its float-weight layers reading
    a per-tensor DequantizeLinear run fp32 in ORT; how many read the float tensor, a copy of the
    folded activation, or (neither possible) a per-channel DequantizeLinear of their own."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    src = onnx.load(str(source), load_external_data=False).graph
    src_producer = {o: n for n in src.node for o in n.output}
    src_inits = {i.name: i for i in src.initializer}
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    position = {o: k for k, n in enumerate(graph.node) for o in n.output}
    added: dict[int, list] = {}  # new nodes by the position of the node whose output they read
    counts = {"float_input": 0, "activation_copied": 0, "per_channel_input": 0}
    copied: dict[str, str] = {}  # a tensor whose folded activation was copied -> the copy's output
    for node in graph.node:
        weight = inits.get(node.input[1]) if node.op_type in WEIGHTED and len(node.input) > 1 else None
        dq = producer.get(node.input[0]) if weight is not None else None
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 2 or dq.input[1] not in inits:
            continue  # quantized (its weight comes from a DequantizeLinear), or no Q/DQ on its input
        if numpy_helper.to_array(inits[dq.input[1]]).size != 1:
            continue  # a per-channel input: ORT leaves it alone
        q = producer.get(dq.input[0])
        tensor = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
        made, meant = producer.get(tensor), src_producer.get(tensor)
        if tensor is not None and (meant is None or (made is not None and made.op_type == meant.op_type)):
            node.input[0] = tensor
            counts["float_input"] += 1
        elif (
            tensor is not None
            and meant.op_type in FOLDED
            and made is not None
            and all(not i or i in inits or i in src_inits for i in meant.input[1:])
        ):
            if tensor not in copied:  # one copy for all the kept layers that read it
                copy = onnx.NodeProto()
                copy.CopyFrom(meant)
                copy.name, copy.input[0], copy.output[0] = f"{meant.name}_fp32", tensor, f"{tensor}_fp32"
                for name in (i for i in copy.input[1:] if i and i not in inits):
                    inits[name] = src_inits[name]
                    graph.initializer.append(src_inits[name])
                added.setdefault(position[made.output[0]], []).append(copy)
                copied[tensor] = copy.output[0]
            node.input[0] = copied[tensor]
            counts["activation_copied"] += 1
        elif (found := _channels(node, weight)) is not None and all(i in inits for i in dq.input[1:3]):
            (axis, length), who, names = found, node.name or node.output[0], []
            for suffix, name in zip(("scale", "zero_point"), dq.input[1:3], strict=False):
                value = numpy_helper.to_array(inits[name])
                names.append(f"{who}_input_{suffix}_per_channel")
                repeated = np.full(length, value.reshape(()), value.dtype)
                graph.initializer.append(numpy_helper.from_array(repeated, names[-1]))
            copy = helper.make_node("DequantizeLinear", [dq.input[0], *names], [f"{dq.output[0]}_for_{who}"])
            copy.attribute.append(helper.make_attribute("axis", axis))
            added.setdefault(position[dq.output[0]], []).append(copy)
            node.input[0] = copy.output[0]
            counts["per_channel_input"] += 1
    if not any(counts.values()):
        return {}
    # each new node right after the one whose output it reads: the graph stays sorted
    nodes = [m for k, n in enumerate(graph.node) for m in (n, *added.get(k, ()))]
    outputs, dropped = {o.name for o in graph.output}, set()
    while True:  # a Q/DQ pair whose only reader now reads float, then its scale and zero point
        read = {i for n in nodes for i in n.input} | outputs
        qdq = ("QuantizeLinear", "DequantizeLinear")
        unread = {k for k, n in enumerate(nodes) if n.op_type in qdq and n.output[0] not in read}
        if not unread:
            break
        dropped.update(i for k in unread for i in nodes[k].input)
        nodes = [n for k, n in enumerate(nodes) if k not in unread]
    del graph.node[:]
    graph.node.extend(nodes)
    for init in [i for i in graph.initializer if i.name in dropped - read]:
        graph.initializer.remove(init)
    model_file.save(model, path)
    return {k: v for k, v in counts.items() if v}
