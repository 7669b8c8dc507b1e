"""ONNX Runtime's fused attention (com.microsoft Attention, what its transformer optimizer writes into
a BERT-style file) in INT8. ORT's static QDQ quantizer has no Attention, so the Q, K and V
projections inside each stay fp32: a quarter of a BERT layer's multiply-adds. ORT's contrib QAttention
runs them in INT8 (the input quantized at run time by DynamicQuantizeLinear, the weights per column).
ORT's `quantize_dynamic` writes it too, but rewrites every Gemm of the graph into MatMul + Add on the
way (a static model's INT8 Gemms with them), so edgekit writes the node itself: what it adds is
QAttention inside the static model, node exclusion, and the count in the summary.
all-MiniLM-L6-v2 optimized by ORT, on a VNNI EPYC: static INT8 0.70x fp32's latency at cosine 0.998,
with QAttention 0.56x at 0.997 (docs/guide/quantize.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgekit.compress import model_file
from edgekit.compress.outer_reads import reads

DOMAIN = "com.microsoft"
# Attention's inputs QAttention has too (input, weights, bias, mask_index); past state, attention
# bias and qkv_hidden_sizes (Q, K, V of different widths) it lacks: such nodes stay fp32
INPUTS = 4
DROPPED = ("qkv_hidden_sizes", "rotary_embedding_dim")


def quantizable(graph) -> list:
    """GRAPH's fused Attention nodes QAttention can replace: a constant 2-D weight and bias, no
    inputs or attributes it lacks."""
    inits = {i.name: i for i in graph.initializer}
    return [
        n
        for n in graph.node
        if n.op_type == "Attention"
        and n.domain == DOMAIN
        and len(n.input) > 2
        and n.input[1] in inits
        and len(inits[n.input[1]].dims) == 2
        and n.input[2] in inits
        and not any(n.input[INPUTS:])
        and not any(a.name in DROPPED for a in n.attribute)
    ]


def quantize(path: Path, exclude: Sequence[str] = (), bits: int = 8) -> int:
    """Rewrite the model at PATH with its quantizable Attention nodes (those named in EXCLUDE left
    fp32) as QAttention: symmetric int8 weights per output column, at most BITS bits (7 where the
    target's u8 x s8 pair sums saturate); returns how many were rewritten."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    skip = set(exclude)
    todo = [n for n in quantizable(graph) if n.name not in skip]
    if not todo:
        return 0
    inits = {i.name: i for i in graph.initializer}
    weights = {n.input[1] for n in todo}
    top = 2 ** (bits - 1) - 1
    replaced = {}
    for n in todo:
        constants, replaced[id(n)] = _replacement(n, inits, top)
        graph.initializer.extend(constants)
    nodes = [m for n in graph.node for m in replaced.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    for name in weights - reads(graph):  # the fp32 weights only the replaced nodes read
        graph.initializer.remove(inits[name])
    model_file.save(model, path)
    return len(todo)


def _replacement(node, inits: dict, top: int) -> tuple[list, list]:
    """(constants, nodes): the int8 weights and scales, DynamicQuantizeLinear and QAttention that
    replace the Attention NODE (INITS: its graph's initializers by name); the weights symmetric per
    output column within +-TOP."""
    from onnx import helper, numpy_helper

    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
    scale = np.maximum(np.abs(w).max(0), 1e-12) / top  # per column: [3 * hidden]
    levels = np.clip(np.round(w / scale), -top, top).astype(np.int8)
    stem = node.name or node.output[0]
    names = {k: f"{stem}_{k}" for k in ("x_q", "x_scale", "x_zp", "w_q", "w_scale", "w_zp")}
    constants = [
        numpy_helper.from_array(levels, names["w_q"]),
        numpy_helper.from_array(scale.astype(np.float32), names["w_scale"]),
        numpy_helper.from_array(np.zeros(len(scale), np.int8), names["w_zp"]),
    ]
    dynamic = helper.make_node(
        "DynamicQuantizeLinear",
        [node.input[0]],
        [names["x_q"], names["x_scale"], names["x_zp"]],
        name=f"{stem}_DynamicQuantizeLinear",
    )
    mask = node.input[3] if len(node.input) > 3 else ""
    inputs = [names["x_q"], names["w_q"], node.input[2], names["x_scale"], names["w_scale"], mask]
    fused = helper.make_node(
        "QAttention",
        [*inputs, names["x_zp"], names["w_zp"]],
        list(node.output),
        name=f"{stem}_quant",
        domain=DOMAIN,
    )
    fused.attribute.extend(node.attribute)
    return constants, [dynamic, fused]


def count(graph) -> tuple[int, int]:
    """(QAttention nodes, fused Attention nodes left fp32) in GRAPH: the summary's counts."""
    ops = [n.op_type for n in graph.node if n.domain == DOMAIN]
    return ops.count("QAttention"), ops.count("Attention")
