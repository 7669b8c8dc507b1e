"""The signal front end of an audio (or other 1-D signal) model stays float: the ops from a raw signal
input to its magnitude (|STFT|, a power spectrum, a log-mel), as speech models compute features
inside the graph. A waveform and its spectrum span more than 8 linear bits hold: silence next to
speech is 40-60 dB down, and it rounds to zero. On Silero VAD (16 kHz, espeak-ng speech over noise)
the INT8 model kept 82 % of the fp32 model's speech decisions with its STFT convolution and magnitude
quantized and 98 % with them float (the encoder after them INT8 either way). Neither ORT's quantizer
nor NNCF does this; an image model (a 4-D input) or a magnitude deep in a network (a LayerNorm
written out with Pow and Sqrt, many layers from the input) is left alone."""

from __future__ import annotations

from collections import Counter

from edgekit.compress.output_tail import COMPUTE

MAGNITUDE = ("Pow", "Sqrt", "Abs", "Log")  # where a transform's output becomes its magnitude
TRANSFORMS = 2  # compute ops a front end may hold before its magnitude: an STFT, a mel filterbank


def _signals(graph) -> set[str]:
    """Float inputs of GRAPH with 2 or 3 axes: [N, samples], [N, channels, samples]."""
    from onnx import TensorProto

    return {
        i.name
        for i in graph.input
        if i.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.FLOAT16)
        and len(i.type.tensor_type.shape.dim) in (2, 3)
    }


def front(graph) -> list[int]:
    """Indices of GRAPH's nodes in a signal front end: each magnitude op that a signal input reaches
    through at most TRANSFORMS compute ops on any one path (an STFT's real and imaginary
    convolutions side by side count once; a filter from one channel to one, which resamples the
    signal, not at all: a constant-Q transform's octaves, each a low-pass and a decimation below the
    last, Basic Pitch's seven) and that measures no normalization, with every node it depends on."""
    signals = _signals(graph)
    if not signals:
        return []
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output}
    shapes = {t.name: list(t.dims) for t in graph.initializer}
    depth, reached = [0] * len(graph.node), [False] * len(graph.node)
    for k, node in enumerate(graph.node):  # topologically sorted, as ONNX requires
        before = [producer[i] for i in node.input if i in producer]
        transform = node.op_type in COMPUTE and not _resamples(node, shapes)
        depth[k] = transform + max((depth[j] for j in before), default=0)
        reached[k] = any(i in signals for i in node.input) or any(reached[j] for j in before)
    found: set[int] = set()
    for k, node in enumerate(graph.node):
        magnitude = node.op_type in MAGNITUDE and reached[k] and depth[k] <= TRANSFORMS
        if magnitude and not _normalizes(graph, producer, k):
            found |= _ancestors(graph, producer, k)
    return sorted(found)


def _resamples(node, shapes: dict[str, list[int]]) -> bool:
    """NODE is a convolution of one channel into one by a constant filter (a low-pass before a
    decimation, a pre-emphasis): the signal again, at another rate."""
    weight = shapes.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
    return weight is not None and weight[:2] == [1, 1]


def _ancestors(graph, producer: dict[str, int], k: int) -> set[int]:
    """Node K and every node it depends on."""
    seen, todo = {k}, [k]
    while todo:
        for name in graph.node[todo.pop()].input:
            j = producer.get(name)
            if j is not None and j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


def _normalizes(graph, producer: dict[str, int], k: int) -> bool:
    """Node K measures a normalization's spread, not a transform's magnitude: a mean is taken between
    it and the compute ops before it (a LayerNorm written out: (x - mean(x)) ** 2, sqrt(var + eps);
    openWakeWord's classifiers normalize their first layer's output so)."""
    seen, todo = {k}, [k]
    while todo:
        j = todo.pop()
        if graph.node[j].op_type == "ReduceMean":
            return True
        if graph.node[j].op_type in COMPUTE:
            continue
        for name in graph.node[j].input:
            i = producer.get(name)
            if i is not None and i not in seen:
                seen.add(i)
                todo.append(i)
    return False


def summary(graph, nodes: list[int]) -> dict:
    """What the front end left float, for the manifest: its nodes, and its compute and magnitude ops."""
    ops = Counter(graph.node[k].op_type for k in nodes)
    return {"nodes": len(nodes), "ops": {op: n for op, n in ops.items() if op in COMPUTE + MAGNITUDE}}
