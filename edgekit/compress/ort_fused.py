"""A file ONNX Runtime optimized and saved (`optimized_model_filepath` at its extended level, or
Olive's ORT passes) holds com.microsoft FusedConv, FusedGemm and FusedMatMul: a layer and the
activation after it (and a residual Add, FusedConv's fourth input) in one node. ORT's quantizer
knows none of them, so those layers stayed fp32 uncounted: such a MobileNetV2 kept 35 of its 52
convolutions fp32. Before quantization each is written back as the standard ops it fused (same
weights, same node name, so --exclude-node names still hold); ORT fuses the INT8 model its own way
when it loads it. A fused node whose activation ORT names but ONNX has no op for stays as it is,
and the summary counts it fp32."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import model_file

DOMAIN = "com.microsoft"
FUSED = ("FusedConv", "FusedGemm", "FusedMatMul")


def unfuse(src: Path, dst: Path) -> int:
    """Write SRC with its fused layers as standard ops to DST; how many (0: nothing written)."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    opset = model_file.default_opset(model) or 13
    inits = {i.name: i for i in graph.initializer}
    nodes, added, done = [], [], 0
    for node in graph.node:
        parts = _parts(node, inits, opset, added) if node.domain == DOMAIN and node.op_type in FUSED else None
        nodes.extend(parts or [node])
        done += parts is not None
    if not done:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    model_file.save(model, dst)
    return done


def _parts(node, inits: dict, opset: int, added: list) -> list | None:
    """The standard nodes NODE fused (constants they need appended to ADDED), or None where it
    cannot be written so."""
    from onnx import helper, numpy_helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    name = node.name or node.output[0]
    out = node.output[0]
    if node.op_type == "FusedMatMul":
        if attrs.get("transA") or attrs.get("transBatchA") or attrs.get("transBatchB"):
            return None
        b = node.input[1]
        if attrs.get("transB"):
            if b not in inits or len(inits[b].dims) != 2:
                return None
            added.append(numpy_helper.from_array(numpy_helper.to_array(inits[b]).T.copy(), f"{name}_B_T"))
            b = f"{name}_B_T"
        alpha = float(attrs.get("alpha", 1.0))
        if alpha == 1.0:
            return [helper.make_node("MatMul", [node.input[0], b], [out], name)]
        added.append(numpy_helper.from_array(np.array(alpha, np.float32), f"{name}_alpha"))
        product = f"{name}_product"
        return [
            helper.make_node("MatMul", [node.input[0], b], [product], name),
            helper.make_node("Mul", [product, f"{name}_alpha"], [out], f"{name}_alpha"),
        ]
    kind = attrs.get("activation", b"")
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if node.op_type == "FusedConv":
        params = list(attrs.get("activation_params", []))
        layer_attrs = {k: v for k, v in attrs.items() if k not in ("activation", "activation_params")}
        layer = helper.make_node("Conv", list(node.input[:3]), [out], name, **layer_attrs)
        residual = node.input[3] if len(node.input) > 3 else ""
    else:  # FusedGemm
        params = [attrs.get(k) for k in ("activation_alpha", "activation_beta") if k in attrs]
        drop = ("activation", "activation_alpha", "activation_beta", "activation_gamma")
        layer = helper.make_node(
            "Gemm", list(node.input), [out], name, **{k: v for k, v in attrs.items() if k not in drop}
        )
        residual = ""
    activation = _activation(kind, params, name, opset, added)
    if activation is None:
        return None
    parts = [layer]
    if residual:
        parts.append(helper.make_node("Add", [out, residual], [out], f"{name}_add"))
    if activation:
        parts.append(activation)
    # chain the parts: each writes a temporary the next reads, the last one NODE's output
    for k, part in enumerate(parts[:-1]):
        part.output[0] = f"{name}_part{k}"
        parts[k + 1].input[0] = part.output[0]
    parts[-1].output[0] = out
    return parts


def _activation(kind: str, params: list, name: str, opset: int, added: list):
    """The standard node for a fused activation KIND with PARAMS reading and writing placeholders
    (the caller wires them), False for none, None where ONNX has no such op."""
    from onnx import helper, numpy_helper

    io = (["x"], ["y"])
    if not kind:
        return False
    if kind in ("Relu", "Sigmoid", "Tanh"):
        return helper.make_node(kind, *io, f"{name}_{kind.lower()}")
    if kind == "LeakyRelu":
        return helper.make_node(kind, *io, f"{name}_leakyrelu", alpha=float(params[0]) if params else 0.01)
    if kind == "HardSigmoid" and len(params) >= 2:
        return helper.make_node(
            kind, *io, f"{name}_hardsigmoid", alpha=float(params[0]), beta=float(params[1])
        )
    if kind == "Clip" and len(params) >= 2:
        if opset < 11:
            return helper.make_node("Clip", *io, f"{name}_clip", min=float(params[0]), max=float(params[1]))
        bounds = [f"{name}_clip_min", f"{name}_clip_max"]
        added.extend(
            numpy_helper.from_array(np.array(v, np.float32), b)
            for v, b in zip(params[:2], bounds, strict=True)
        )
        return helper.make_node("Clip", ["x", *bounds], ["y"], f"{name}_clip")
    return None
