"""Normalizations and softmaxes written out as elementwise ops around a reduction stay float.

jax2tf/tf2onnx writes Flax's LayerNorm as ReduceSum(x) and ReduceSum(x * x) times 1/n, their
difference as the variance, a Reciprocal of its Sqrt, and (x - mean) * rstd * gamma + beta, and a
softmax as ReduceMax, Sub, Exp, ReduceSum, Div. ONNX Runtime's optimizer fuses neither (its
LayerNorm fusion matches torch's ReduceMean / Pow form), so its quantizer rounds the sum of
squares, the variance and each product to 8 bits per tensor: Google's Magika file-type classifier
kept 72 % top-1 agreement. ORT has no INT8 kernel for these statistics, so they cost nothing to
keep float; edgekit finds them by the graph (a reduction whose result meets the tensor it reduced
again before any matrix product or convolution), as the transformer recipe keeps a
LayerNormalization or Softmax node float. A squeeze-and-excitation's mean (it meets its tensor
after a convolution) or a global pooling (it never meets it) is no such island."""

from __future__ import annotations

from edgekit.compress import activation_islands
from edgekit.compress.output_tail import COMPUTE

REDUCTIONS = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceMax", "ReduceL2", "ReduceLogSumExp")
SQUARES = ("Mul", "Pow", "Abs")  # what a reduction's input may be computed from its tensor alone by


def islands(graph) -> list[list[int]]:
    """GRAPH's normalization islands, each the indices of its nodes: a reduction, every node its
    result reaches before a compute op, and the square it reduces (x * x, Pow(x, 2)), where one of
    those nodes reads the reduced tensor again (x - mean, x * rstd, x - max), or that shares nodes
    with such an island (a variance's sum of squares meets x only through the mean's nodes); islands
    sharing nodes are joined."""
    readers: dict[str, list[int]] = {}
    producer: dict[str, int] = {}
    for k, n in enumerate(graph.node):
        for name in n.input:
            readers.setdefault(name, []).append(k)
        for name in n.output:
            producer[name] = k
    constant = activation_islands.constants(graph)
    rejoining, others = [], []
    for r, node in enumerate(graph.node):
        if node.op_type not in REDUCTIONS or not node.input:
            continue
        sources, square = {node.input[0]}, set()
        p = producer.get(node.input[0])
        if p is not None and graph.node[p].op_type in SQUARES:
            read = {t for t in graph.node[p].input if t and t not in constant}
            if len(read) == 1:
                sources |= read
                square = {p}
        reached, stack = set(), [r]
        while stack:
            k = stack.pop()
            if k in reached:
                continue
            reached.add(k)
            for out in graph.node[k].output:
                stack.extend(j for j in readers.get(out, ()) if graph.node[j].op_type not in COMPUTE)
        meets = any(t in sources for k in reached - {r} - square for t in graph.node[k].input)
        (rejoining if meets else others).append(reached | square)
    found: list[set[int]] = []
    for island in rejoining + others:  # a variance's sum of squares meets x only through the mean's
        joined = [f for f in found if f & island]
        if not joined and island not in rejoining:
            continue
        for other in joined:
            island = island | other
            found.remove(other)
        found.append(island)
    return [sorted(f) for f in found]
