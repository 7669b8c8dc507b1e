"""A bias two nodes share, given each reader its own copy before ONNX Runtime's static quantizer
runs. ORT copies it itself (a quantized bias's scale depends on its node's input and weight
scales), naming the copy by appending a number to the bias's name without checking the model's
other tensors: torch's dynamo exporter names values val_N and shares equal constants, so the copy
of a GroupNorm's shared zero bias `val_11` became `val_118`, which was a Sigmoid's output, and the
INT8 model could not be loaded. edgekit's copies get names no tensor has. A bias also read as
anything else (the legacy exporter shares equal initializers through Identity nodes: a ConvNeXt's
zero conv bias was also the operand of a Linear's Add) is copied for every bias reader: ORT
quantized the shared tensor as a uint8 activation, and the convolution read its bias from that.
And a Gemm's bias given as a row ([1, N], jax2tf/tf2onnx's Dense after ORT fused its MatMul + Add)
made a vector: ORT's per-channel bias check indexes it per output channel and stopped on a row."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from edgekit.compress import model_file
from edgekit.compress.outer_reads import branch_reads, reads, subgraphs

BIAS_INPUT = 2  # Conv, ConvTranspose, Gemm, InstanceNormalization, LayerNormalization: B is input 2


def unshare(src: Path, dst: Path) -> int:
    """Write SRC to DST with every initializer read as input 2 by more than one node of the main
    graph copied for each reader after the first, and for every one where another node or a
    subgraph reads it otherwise; how many copies (0: nothing written)."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers: dict[str, list] = {}
    other: set[str] = set()
    for node in graph.node:
        if len(node.input) > BIAS_INPUT and node.input[BIAS_INPUT] in initializers:
            readers.setdefault(node.input[BIAS_INPUT], []).append(node)
        other.update(t for i, t in enumerate(node.input) if i != BIAS_INPUT)
        for g in subgraphs(node):
            other |= reads(g)
    shared = {name: nodes for name, nodes in readers.items() if len(nodes) > 1 or name in other}
    if not shared:
        return 0
    taken = _names(graph)
    copies = 0
    for name, nodes in shared.items():
        for k, node in enumerate(nodes[0 if name in other else 1 :], start=1):
            copy = f"{name}_edgekit_bias_{k}"
            while copy in taken:
                copy += "_"
            taken.add(copy)
            tensor = graph.initializer.add()
            tensor.CopyFrom(initializers[name])
            tensor.name = copy
            node.input[BIAS_INPUT] = copy
            copies += 1
    model_file.save(model, dst)
    return copies


def vector_biases(src: Path, dst: Path) -> int:
    """Write SRC to DST with every Gemm's initializer bias that broadcasts along its output's rows
    ([1, N], [1, 1], [1], a scalar) as the vector [N] it is, an own copy where something else reads
    it too; how many (0: nothing written). The Gemm computes the same."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    readers = Counter(t for node in graph.node for t in node.input)
    branch, taken, changed = branch_reads(graph), _names(graph), 0
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) <= BIAS_INPUT:
            continue
        bias, weight = initializers.get(node.input[BIAS_INPUT]), initializers.get(node.input[1])
        if bias is None or weight is None or len(weight.dims) != 2:
            continue
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        n = weight.dims[0] if trans_b else weight.dims[1]
        if list(bias.dims) == [n] or len(bias.dims) > 2 or any(d != 1 for d in bias.dims[:-1]):
            continue
        if bias.dims and bias.dims[-1] not in (1, n):
            continue
        vector = np.ascontiguousarray(np.broadcast_to(numpy_helper.to_array(bias).reshape(-1), (n,)))
        name = bias.name
        if readers[name] > 1 or name in branch:  # another node reads it as it is
            while name in taken:
                name += "_edgekit_vector"
            taken.add(name)
            readers[bias.name] -= 1
            bias = graph.initializer.add()
            node.input[BIAS_INPUT] = name
        bias.CopyFrom(numpy_helper.from_array(vector, name))
        changed += 1
    if changed:
        model_file.save(model, dst)
    return changed


def _names(graph) -> set[str]:
    """Every tensor name GRAPH and its subgraphs define or read."""
    names = {t.name for t in graph.initializer} | {v.name for v in [*graph.input, *graph.output]}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for g in subgraphs(node):
            names |= _names(g)
    return names
