"""Multiply-accumulates per sample of a model's Conv/Gemm/MatMul nodes, from ONNX shape inference:
the work a model does, counted the same on every machine (the sensitivity table's MACs column, the
range search's sample count)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgekit.compress import ort_fused
from edgekit.compress.output_tail import COMPUTE


def macs(fp32: Path, inputs: dict[str, tuple[int, ...]] | None = None) -> dict[str, int]:
    """Each Conv/Gemm/MatMul node's multiply-accumulates per sample; INPUTS (name -> shape) fix the
    graph inputs' axes first, else symbolic axes count as 1. ONNX Runtime's fused layers (a file it
    saved) count as the standard ops they are written back as, which shape inference knows; a node
    whose shapes it cannot infer is left out."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="edgekit-macs-") as tmp:
        unfused = Path(tmp) / "unfused.onnx"
        model = onnx.load(str(unfused if ort_fused.unfuse(fp32, unfused) else fp32), load_external_data=False)
    for v in model.graph.input:
        shape = (inputs or {}).get(v.name)
        if shape is not None and len(shape) == len(v.type.tensor_type.shape.dim):
            for d, n in zip(v.type.tensor_type.shape.dim, shape, strict=True):
                d.Clear()
                d.dim_value = int(n)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    g = model.graph
    shapes = {
        v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
        for v in [*g.input, *g.value_info, *g.output]
    }
    shapes.update({t.name: list(t.dims) for t in g.initializer})
    result = {}
    for n in g.node:
        if n.op_type not in COMPUTE or n.output[0] not in shapes or n.input[1] not in shapes:
            continue
        out, w = shapes[n.output[0]], shapes[n.input[1]]
        if n.op_type in ("Conv", "ConvTranspose"):
            result[n.name] = int(np.prod(out[1:]) * np.prod(w[1:]))
        else:  # out = a @ w: K is w's first axis for MatMul; Gemm with transB=1 stores w as (N, K)
            trans = any(a.name == "transB" and a.i for a in n.attribute)
            result[n.name] = int(np.prod(out[1:]) * (w[-1] if trans else w[-2]))
    return result
