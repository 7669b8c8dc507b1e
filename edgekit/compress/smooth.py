"""Transformer graphs for INT8: found by their attention, and smoothed (SmoothQuant) before calibration.

A transformer's activations carry a few channels with outliers 10-100x the rest (the residual
stream after LayerNorm); one per-tensor INT8 scale for them leaves every other channel a few
levels, and percentile clipping cuts the outliers the model depends on. SmoothQuant (Xiao et al.
2023, NNCF's transformer preset) moves that range into the weights: X @ W = (X / s) @ (s * W),
with s_j = max|X_j|^alpha / max|W_j|^(1 - alpha) per input channel j, so both sides quantize well.
Here X / s is an explicit float Mul before each MatMul/Gemm (X often feeds a residual Add too).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import model_file, tensors
from edgekit.data import Samples

# scale, mask, view; Flatten: an opset < 13 Softmax upgraded to 13 (PaddlePaddle's exports) runs on
# a Flatten of its scores (ONNX's version converter keeps the old 2-D semantics that way)
PASS_THROUGH = (
    "Mul",
    "Div",
    "Add",
    "Sub",
    "Where",
    "Cast",
    "Reshape",
    "Transpose",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
)


# ONNX Runtime's contrib attention ops, as its transformer optimizer (onnxruntime.transformers,
# Olive) fuses a model's attention into one node: the Softmax is inside, out of has_attention's sight
FUSED_ATTENTION = (
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
    "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention", "DecoderMaskedSelfAttention",
)  # fmt: skip


def has_attention(graph) -> bool:
    """Whether GRAPH computes attention: a Softmax reached, through at most three scaling, masking
    or reshaping ops, from a MatMul of two activations (scores = Q @ K^T), as BERT, ViT and
    Whisper-style exports all write it; or a fused attention node of ONNX Runtime's."""
    if any(n.domain == "com.microsoft" and n.op_type in FUSED_ATTENTION for n in graph.node):
        return True
    weights = {i.name for i in graph.initializer} | {
        n.output[0] for n in graph.node if n.op_type == "Constant"
    }
    producer = {o: n for n in graph.node for o in n.output}

    def from_scores(name: str, depth: int) -> bool:
        node = producer.get(name)
        if node is None:
            return False
        if node.op_type == "MatMul":
            return not any(i in weights for i in node.input[:2])
        return (
            depth < 3 and node.op_type in PASS_THROUGH and any(from_scores(i, depth + 1) for i in node.input)
        )

    return any(n.op_type == "Softmax" and from_scores(n.input[0], 0) for n in graph.node)


def _targets(graph) -> dict[str, list[int]]:
    """Activation name -> the indices of the MatMul/Gemm nodes that multiply it by a constant 2-D
    weight read by no other node."""
    weights = {i.name: i for i in graph.initializer}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    groups: dict[str, list[int]] = {}
    for k, n in enumerate(graph.node):
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2 or n.input[0] in weights:
            continue
        w = weights.get(n.input[1])
        trans_a = any(a.name == "transA" and a.i for a in n.attribute)
        if w is None or len(w.dims) != 2 or readers[n.input[1]] != 1 or trans_a:
            continue
        groups.setdefault(n.input[0], []).append(k)
    return groups


def _channel_axis(node) -> int:
    """The axis of NODE's weight that runs over the input channels (0, or 1 for Gemm with transB)."""
    return int(node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute))


def _abs_max(model, names: dict[str, int], calib: Samples, fixed: int | None, batch: int):
    """Per-channel (last axis) max |value| over the calibration samples of each tensor in NAMES
    (name -> its ONNX element type)."""
    amax: dict[str, np.ndarray] = {}
    for found, _ in tensors.values(model, names, calib, fixed, batch):
        for name, value in found.items():
            m = np.abs(value.reshape(-1, value.shape[-1])).max(0)
            amax[name] = np.maximum(amax[name], m) if name in amax else m
    return amax


def smooth(src: Path, out: Path, calib: Samples, alpha: float, fixed: int | None, batch: int) -> int:
    """Write SRC with every MatMul/Gemm activation smoothed by ALPHA (measured on CALIB) to OUT;
    returns how many activations were smoothed."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    groups = _targets(graph)
    if not groups:
        return 0
    inits = {i.name: i for i in graph.initializer}
    types = {x: inits[graph.node[where[0]].input[1]].data_type for x, where in groups.items()}
    amax = _abs_max(model, types, calib, fixed, batch)
    inserts = []
    for k, (x, where) in enumerate(groups.items()):
        nodes = [graph.node[i] for i in where]
        ws = [numpy_helper.to_array(inits[n.input[1]]) for n in nodes]
        w_max = np.max([np.abs(w).max(1 - _channel_axis(n)) for w, n in zip(ws, nodes, strict=True)], 0)
        x_max = amax[x].astype(np.float64)
        if x_max.shape != w_max.shape:
            continue
        ok = (x_max > 0) & (w_max > 0)
        s = np.where(ok, np.power(x_max, alpha) / np.power(np.where(ok, w_max, 1), 1 - alpha), 1.0)
        s = np.clip(s, 1e-5, 1e5)
        for w, n in zip(ws, nodes, strict=True):
            shape = (-1, 1) if _channel_axis(n) == 0 else (1, -1)
            scaled = (w * s.reshape(shape)).astype(w.dtype)
            inits[n.input[1]].CopyFrom(numpy_helper.from_array(scaled, n.input[1]))
        scale = numpy_helper.from_array((1 / s).astype(ws[0].dtype), f"edgekit_smooth_{k}_scale")
        graph.initializer.append(scale)
        smoothed = f"edgekit_smooth_{k}_out"
        mul = onnx.helper.make_node("Mul", [x, scale.name], [smoothed], name=f"edgekit_smooth_{k}")
        inserts.append((min(where), mul))
        for n in nodes:
            n.input[0] = smoothed
    for position, mul in sorted(inserts, key=lambda t: -t[0]):  # from the back: positions stay valid
        graph.node.insert(position, mul)
    model_file.save(model, out)
    return len(inserts)
