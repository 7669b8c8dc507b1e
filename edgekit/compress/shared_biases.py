"""A bias two nodes share, given each reader its own copy before ONNX Runtime's static quantizer
runs. ORT copies it itself (a quantized bias's scale depends on its node's input and weight
scales), naming the copy by appending a number to the bias's name without checking the model's
other tensors: torch's dynamo exporter names values val_N and shares equal constants, so the copy
of a GroupNorm's shared zero bias `val_11` became `val_118`, which was a Sigmoid's output, and the
INT8 model could not be loaded. edgekit's copies get names no tensor has. A bias also read as
anything else (the legacy exporter shares equal initializers through Identity nodes: a ConvNeXt's
zero conv bias was also the operand of a Linear's Add) is copied for every bias reader: ORT
quantized the shared tensor as a uint8 activation, and the convolution read its bias from that."""

from __future__ import annotations

from pathlib import Path

from edgekit.compress import model_file
from edgekit.compress.outer_reads import reads, subgraphs

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


def _names(graph) -> set[str]:
    """Every tensor name GRAPH and its subgraphs define or read."""
    names = {t.name for t in graph.initializer} | {v.name for v in [*graph.input, *graph.output]}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
        for g in subgraphs(node):
            names |= _names(g)
    return names
