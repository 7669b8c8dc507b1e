"""Empirical bias correction (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization
and Bias Correction") of a QDQ model: rounding the weights shifts the mean of each output channel.

For each quantized Conv/Gemm, with W its fp32 weight and Wq the dequantized INT8 one, the mean
error of an output channel over the calibration samples is E[(W - Wq) * x] = (W - Wq) * E[x], the
layer applied to its mean input (exact for a linear layer, padding included). That mean is added
to the layer's bias, so on the calibration data each channel's mean output error from its weights'
rounding is zero.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import model_file

LAYERS = ("Conv", "Gemm")


def weight_levels(node, inits: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The integers, scale and zero point (both shaped to broadcast over the integers) of a
    DequantizeLinear NODE of constant inputs (None: not constant)."""
    from onnx import helper, numpy_helper

    if node is None or node.op_type != "DequantizeLinear" or node.input[0] not in inits:
        return None
    q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    zp = (
        numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
        if len(node.input) > 2 and node.input[2]
        else np.zeros(())
    )
    axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zp = scale.reshape(shape), np.reshape(zp, shape) if np.ndim(zp) else zp
    return q, scale, zp


def _dequantized(node, inits: dict) -> np.ndarray | None:
    """The value a DequantizeLinear NODE makes from its constant inputs (None: not constant)."""
    levels = weight_levels(node, inits)
    if levels is None:
        return None
    q, scale, zp = levels
    return (q - zp) * scale


def _conv_errors(layers: list, means: dict, deltas: list[np.ndarray]) -> list[np.ndarray]:
    """Per output channel, the spatial mean of each Conv of LAYERS applied with weight DELTAS to its
    mean input (one ONNX Runtime session for all of them)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    nodes, inits, outs = [], [], []
    for k, (node, delta) in enumerate(zip(layers, deltas, strict=True)):
        x = means[node.input[0]][None].astype(np.float32)
        inits += [
            numpy_helper.from_array(x, f"x{k}"),
            numpy_helper.from_array(delta.astype(np.float32), f"w{k}"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                [f"x{k}", f"w{k}"],
                [f"y{k}"],
                **{a.name: helper.get_attribute_value(a) for a in node.attribute},
            )
        )
        outs.append(helper.make_tensor_value_info(f"y{k}", onnx.TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "bias_errors", [], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return [y[0].reshape(y.shape[1], -1).mean(1) for y in session.run(None, {})]


def layer_inputs(fp32: Path) -> list[str]:
    """The inputs of the Conv/Gemm layers of FP32 with a constant weight: the tensors whose means
    over the calibration data (edgekit.compress.calibrate, in its one pass) `correct` needs."""
    import onnx

    model = onnx.load(str(fp32), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    names = {n.input[0] for n in model.graph.node if n.op_type in LAYERS and n.input[1] in inits}
    return sorted(names - inits)


def quantized_layers(ref, graph, ops: tuple[str, ...] = LAYERS) -> list[tuple]:
    """(fp32 layer, QDQ layer, the DequantizeLinear of its weight) for each layer of OPS of the QDQ
    GRAPH whose weight is constant and was quantized from a weight of the fp32 graph REF that only
    that layer reads. A layer is found by its weight: ORT writes W as W_quantized; it renames
    outputs and drops the Relu/Clip after a conv."""
    ref_inits = {i.name for i in ref.initializer}
    readers: dict[str, list] = {}
    for n in ref.node:
        if n.op_type in ops and len(n.input) > 1 and n.input[1] in ref_inits:
            readers.setdefault(n.input[1], []).append(n)
    ref_layers = {w: nodes[0] for w, nodes in readers.items() if len(nodes) == 1}
    inits = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    found = []
    for node in graph.node:
        weight = producer.get(node.input[1]) if node.op_type in ops and len(node.input) > 1 else None
        if weight is None or weight.op_type != "DequantizeLinear" or weight.input[0] not in inits:
            continue
        src = ref_layers.get(weight.input[0].removesuffix("_quantized"))
        if src is not None and src.op_type == node.op_type:
            found.append((src, node, weight))
    return found


def correct(fp32: Path, qdq: Path, means: dict[str, np.ndarray], known: dict | None = None) -> int:
    """Add to each quantized Conv/Gemm bias of the QDQ model (rewritten in place) the mean output
    error its weights' rounding makes on the calibration data (MEANS: the mean of each of FP32's
    `layer_inputs`), FP32 being the model it was quantized from; returns how many layers were
    corrected. KNOWN: the Conv errors computed so far, by layer and quantized weight (filled here),
    for the many models written from one calibration (edgekit.compress.quantize.calibrated), whose
    layers mostly have the same weights."""
    import hashlib

    import onnx
    from onnx import helper, numpy_helper

    ref = onnx.load(str(fp32))
    ref_inits = {i.name: i for i in ref.graph.initializer}
    model = onnx.load(str(qdq))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    chosen = []  # (the fp32 layer, its weight error, the bias to change)
    for src, node, weight in quantized_layers(ref.graph, graph):
        if len(node.input) < 3 or src.input[0] not in means:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and (attrs.get("transA") or attrs.get("alpha", 1.0) != 1.0):
            continue
        bias = producer.get(node.input[2])
        if not (node.input[2] in inits or (bias is not None and bias.input[0] in inits)):
            continue
        wq = _dequantized(weight, inits)
        w = numpy_helper.to_array(ref_inits[src.input[1]]).astype(np.float64)
        if w.shape != wq.shape:
            continue
        key = (src.name, hashlib.blake2b(wq.tobytes(), digest_size=16).digest())
        chosen.append((src, w - wq, node.input[2] if node.input[2] in inits else bias, key))
    if not chosen:
        return 0
    known = {} if known is None else known
    convs = [(src, delta, key) for src, delta, _, key in chosen if src.op_type == "Conv" and key not in known]
    if convs:
        errors = _conv_errors([c for c, _, _ in convs], means, [d for _, d, _ in convs])
        known.update({key: e for (_, _, key), e in zip(convs, errors, strict=True)})
    for src, delta, bias, key in chosen:
        if src.op_type == "Conv":
            error = known[key]
        else:
            k = delta.shape[1] if _trans_b(src) else delta.shape[0]
            x = means[src.input[0]].reshape(-1, k).mean(0)
            error = delta @ x if _trans_b(src) else x @ delta
        if isinstance(bias, str):  # a float bias
            b = numpy_helper.to_array(inits[bias])
            inits[bias].CopyFrom(numpy_helper.from_array((b + error).astype(b.dtype), bias))
            continue
        q = numpy_helper.to_array(inits[bias.input[0]])
        scale = numpy_helper.to_array(inits[bias.input[1]]).astype(np.float64)
        info = np.iinfo(q.dtype)
        fixed_q = np.clip(np.round(q + error / scale), info.min, info.max).astype(q.dtype)
        inits[bias.input[0]].CopyFrom(numpy_helper.from_array(fixed_q, bias.input[0]))
    model_file.save(model, qdq)
    return len(chosen)


def _trans_b(node) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)
