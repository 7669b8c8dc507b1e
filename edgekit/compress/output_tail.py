"""The output tail stays float: the ops after a model's last matrix product or convolution on every
path to an output (a detector's box decoding, its class sigmoid and the Concat joining them; a
Softmax; a pooling and normalization). They cost little time, and one per-tensor scale over what
they join loses the small-range part: YOLOv8 (NudeNet's 320n, ultralytics' export) concatenates box
coordinates in pixels (0-320) with class probabilities (0-1), which then kept one or two levels
(SQNR of the scores 0 dB). ORT's quantizer quantizes that Concat; ultralytics' NNCF export leaves
its head out by a name pattern, edgekit by the graph."""

from __future__ import annotations

COMPUTE = ("Conv", "ConvTranspose", "MatMul", "Gemm")  # the ops INT8 quantizes (quantize.COMPUTE_OPS)


def tail(graph) -> list[int]:
    """Indices of GRAPH's nodes from which no compute op can be reached: their outputs feed only
    other tail nodes or the graph's outputs."""
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(graph.node):
        for name in n.input:
            readers.setdefault(name, []).append(k)
    leads = [False] * len(graph.node)  # a compute op is reachable from the node (itself included)
    for k in reversed(range(len(graph.node))):  # the graph is in topological order
        node = graph.node[k]
        leads[k] = node.op_type in COMPUTE or any(leads[j] for o in node.output for j in readers.get(o, ()))
    return [k for k, lead in enumerate(leads) if not lead]


JOINS = ("Concat", "Add", "Sub", "Mul", "Div", "Where")  # ops whose every input is data


def decoded(graph) -> set[str]:
    """GRAPH's outputs whose tail joins tensors with a Concat: a decoded detection (box coordinates
    beside class scores, [N, 4 + classes, anchors]), judged by SQNR ("other"), not as a sequence of
    class scores. Only data inputs are followed (a Reshape's shape, often a Concat, is not)."""
    in_tail = set(tail(graph))
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output}
    found = set()
    for out in graph.output:
        todo, seen = [out.name], set()
        while todo:
            k = producer.get(todo.pop())
            if k is None or k in seen or k not in in_tail:
                continue
            seen.add(k)
            node = graph.node[k]
            if node.op_type == "Concat":
                found.add(out.name)
                break
            todo.extend(node.input if node.op_type in JOINS else node.input[:1])
    return found


def with_decoded(model, given: dict[str, str]) -> dict[str, str]:
    """GIVEN output kinds (--output-kind, by name or output_N) with MODEL's decoded outputs judged
    as "other" where GIVEN says nothing of them."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    found = decoded(graph)
    names = [o.name for o in graph.output]
    added = {
        n: "other"
        for i, n in enumerate(names)
        if n in found and n not in given and f"output_{i}" not in given
    }
    return {**added, **given}
