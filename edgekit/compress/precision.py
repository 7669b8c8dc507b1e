"""fp16 ONNX (onnxruntime.transformers' converter) and bf16 through OpenVINO's inference precision.

What edgekit adds to `convert_float_to_float16`: fp32 inputs and outputs by default, a block list
that also keeps numerically unsafe ops in fp32 (reductions, softmax, normalizations, exp/log/pow:
fp16's 65504 range and 11-bit mantissa overflow or lose sums there), and a count of what it did.
bf16 is no file format here: the artifact keeps its fp32 ONNX and records that the runtime must
compute in bf16, which only a CPU with bf16 instructions does natively.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.compress.outer_reads import subgraphs
from edgekit.errors import EdgekitError, first_line

# Ops edgekit keeps in fp32 on top of the converter's own block list (ML ops, TopK, Range ...).
UNSAFE_OPS = (
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceLogSumExp",
    "ReduceProd",
    "Softmax",
    "LogSoftmax",
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Exp",
    "Log",
    "Pow",
    "Sqrt",
    "Reciprocal",
)
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


class Fp16Config(BaseModel):
    """fp16 weights and activations, except the blocked ops; fp32 at the model's edges by default."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    keep_io_types: bool = True  # callers keep feeding fp32 and reading fp32
    block_ops: list[str] = Field(default_factory=lambda: list(UNSAFE_OPS))
    block_nodes: list[str] = Field(default_factory=list)


def convert_fp16(fp32: Path, out: Path, cfg: Fp16Config) -> dict:
    """Write the fp16 model to OUT; return what stayed fp32 and how many initializers became fp16."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    from edgekit.export.openvino import quantization

    model = onnx.load(str(fp32))
    # an already quantized model's Q/DQ, QLinear* and dynamic-quantization ops read fp32 scales and
    # inputs: converted, the model is invalid (ddddocr's ConvInteger model); they stay fp32
    quantized = set(quantization(fp32))
    # The converter puts the Cast before a blocked node inside an If or Loop body into the main graph,
    # where its input does not exist (Silero VAD's opset-18 file: an invalid model). edgekit's own
    # numerics blocks that occur in a body apply to the main graph's nodes by name: the body's go fp16,
    # which the fp16 check then judges (78.8 dB on that file). The converter's own list and the
    # quantized ops stay blocked by type: they have no fp16 kernels.
    inside = Counter(n.op_type for g in _graphs(model.graph) if g is not model.graph for n in g.node)
    by_name = [t for t in cfg.block_ops if t in inside]
    main = [n for n in model.graph.node if n.op_type in by_name]
    for i, n in enumerate(main):
        n.name = n.name or f"edgekit_fp32_{n.op_type}_{i}"  # a name the node block list can hold
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(cfg.block_ops) | quantized)
    try:
        half = convert_float_to_float16(
            model,
            keep_io_types=cfg.keep_io_types,
            op_block_list=[t for t in blocked if t not in by_name],
            node_block_list=[*cfg.block_nodes, *(n.name for n in main)] or None,
        )
    except Exception as e:
        raise EdgekitError(f"fp16 conversion failed: {first_line(e)}") from None
    onnx.save(half, str(out))
    summary = summarize_fp16(half, blocked)
    if by_name:
        summary["fp16_in_control_flow"] = {t: inside[t] for t in by_name}
    return summary


def _graphs(graph):
    """GRAPH and every subgraph in it (If branches, Loop and Scan bodies), at any depth."""
    yield graph
    for n in graph.node:
        for g in subgraphs(n):
            yield from _graphs(g)


def summarize_fp16(model, blocked: list[str]) -> dict:
    """Initializers by dtype (subgraphs' too), the ops kept fp32 by the block list, and the casts the
    converter added."""
    import onnx

    dtypes = Counter(
        onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
        for g in _graphs(model.graph)
        for t in g.initializer
    )
    kept = Counter(n.op_type for n in model.graph.node if n.op_type in blocked)
    return {
        "initializers": dict(dtypes),
        "kept_fp32_ops": dict(kept),
        "casts": sum(n.op_type == "Cast" for n in model.graph.node),
        "io": "fp32" if all(_is_fp32(v) for v in [*model.graph.input, *model.graph.output]) else "fp16",
    }


def _is_fp32(value) -> bool:
    import onnx

    return value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16


def bf16_unsupported() -> str | None:
    """Why this machine cannot compute in bf16 natively (no CPU flag, no OpenVINO), or None."""
    from edgekit.benchmarks.fingerprint import host
    from edgekit.runtimes import ov

    if not any(f in host()["cpu_flags"] for f in BF16_FLAGS):
        return (
            f"--bf16 needs a CPU with {' or '.join(BF16_FLAGS)} (this one, {host()['cpu']}, has neither); "
            "use --fp16 or --int8 instead"
        )
    if not ov.available():
        return f"--bf16 runs through OpenVINO, which is not installed ({ov.INSTALL})"
    return None
