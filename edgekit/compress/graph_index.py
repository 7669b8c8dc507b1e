"""What a graph rewrite reads of an ONNX graph before it edits it: the initializers, each tensor's
producer and readers, the tensors it cannot see all readers of, and a constant tensor's value."""

from __future__ import annotations

from edgekit.compress import outer_reads


def index(graph) -> tuple[dict, dict, dict[str, list], set[str]]:
    """GRAPH's initializers by name, each tensor's producing node, each tensor's reading nodes, and
    the tensors read where a pass cannot see: graph outputs, and names a subgraph (If, Loop) reads."""
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    return inits, producer, readers, {o.name for o in graph.output} | outer_reads.branch_reads(graph)


def scalar(name: str, inits: dict, producer: dict) -> float | None:
    """NAME's value where it is a constant scalar: an initializer of one value, or one dequantized
    from such (ORT's quantizer quantizes a Mul's or an Add's constant, not a Div's); None otherwise."""
    from onnx import numpy_helper

    node = producer.get(name)
    if node is not None and node.op_type == "DequantizeLinear":
        parts = [scalar(x, inits, producer) for x in node.input[:3] if x]
        if len(parts) < 2 or any(p is None for p in parts):
            return None
        return (parts[0] - (parts[2] if len(parts) > 2 else 0.0)) * parts[1]
    if name not in inits:
        return None
    value = numpy_helper.to_array(inits[name])
    return float(value.reshape(())) if value.size == 1 and value.dtype.kind in "fiub" else None
