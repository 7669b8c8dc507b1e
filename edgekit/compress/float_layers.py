"""Layers a QDQ model leaves fp32 stay fp32 in ONNX Runtime.

ORT's WeightBiasQuantization graph optimization (on at every optimization level but none) gives
per-tensor INT8 weights to any Conv, ConvTranspose or Gemm with float weights that reads a
DequantizeLinear of per-tensor scale and writes, through at most a Relu or Clip, into a
QuantizeLinear: a layer the mixed-precision search kept fp32 ran in ORT with per-tensor INT8
weights, and after the activation equalization (per-channel gains) one such layer raised
EfficientNet-Lite1's KL divergence from fp32 nine-fold (0.022 -> 0.20; top-1 agreement 86 -> 71 %
on 100 crops). edgekit gives such a layer a DequantizeLinear of its own whose scale and zero point
are the same ones repeated per channel: the same values in, so the model means what it meant, and
ORT leaves the layer's weights fp32. (Reading the tensor before the Q/DQ pair instead is wrong where
the quantizer folded a ReLU6 into that Q's saturation.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def pin(path: Path) -> list[str]:
    """Rewrite PATH (a QDQ ONNX file) so that ORT cannot quantize the float-weight layers that read
    a per-tensor DequantizeLinear; the names of the layers pinned."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    pinned, added = [], []
    for node in graph.node:
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        dq = producer.get(node.input[0]) if node.input else None
        if weight is None or dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 2:
            continue  # a quantized layer (its weight comes from a DequantizeLinear), or no Q/DQ input
        found = _channels(node, weight)
        values = [numpy_helper.to_array(inits[n]) if n in inits else None for n in dq.input[1:3]]
        if found is None or values[0] is None or values[0].size != 1 or any(v is None for v in values[1:]):
            continue
        axis, length = found
        names = []
        for suffix, value in zip(("scale", "zero_point"), values, strict=False):
            names.append(f"{node.name or node.output[0]}_input_{suffix}_per_channel")
            repeated = np.full(length, value.reshape(()), value.dtype)
            graph.initializer.append(numpy_helper.from_array(repeated, names[-1]))
        out = f"{node.input[0]}_for_{node.name or node.output[0]}"
        added.append(helper.make_node("DequantizeLinear", [dq.input[0], *names], [out], axis=axis))
        node.input[0] = out
        pinned.append(node.name)
    if not pinned:
        return []
    nodes = list(graph.node)
    for new in added:  # each right after the DequantizeLinear it copies: the graph stays sorted
        source = producer.get(new.input[0])
        nodes.insert(nodes.index(source) + 1 if source is not None else 0, new)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 2**31 - 2**24)
    return pinned
