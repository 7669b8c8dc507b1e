"""The output tail stays float: the ops after a model's last matrix product or convolution on every
path to an output (a detector's box decoding, its class sigmoid and the Concat joining them; a
Softmax; a pooling and normalization). They cost little time, and one per-tensor scale over what
they join loses the small-range part: YOLOv8 (NudeNet's 320n, ultralytics' export) concatenates box
coordinates in pixels (0-320) with class probabilities (0-1), which then kept one or two levels
(SQNR of the scores 0 dB). ORT's quantizer quantizes that Concat; ultralytics' NNCF export leaves
its head out by a name pattern, edgekit by the graph."""

from __future__ import annotations

from pathlib import Path

from edgekit.compress import model_file, outer_reads

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


PRODUCTS = ("MatMul", "Gemm")  # the compute ops ONNX Runtime fuses with a float output


def float_products(path: Path) -> int:
    """Remove, in the QDQ model at PATH, each QuantizeLinear (and its DequantizeLinears) that ORT's
    quantizer wrote on a MatMul's or Gemm's output when only the float tail reads it; how many.
    ONNX Runtime runs such a product with a float output in one kernel (MatMulIntegerToFloat,
    QGemm), as fast, so the pair only rounds: torchcrepe's 360 pitch logits before their Sigmoid,
    rounded to 8 bits, tied neighbouring bins and lost 15 points of top-1 agreement. A Conv keeps
    its pair: ORT has no INT8 Conv with a float output."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    outputs = {o.name for o in graph.output}
    branch_reads = outer_reads.branch_reads(graph)
    in_tail = {id(graph.node[k]) for k in tail(graph)}
    drop, renames, dropped = set(), {}, set()  # renames: a tensor read -> the one read instead
    pairs = 0
    for q in graph.node:
        source = producer.get(q.input[0]) if q.op_type == "QuantizeLinear" else None
        if source is None or source.op_type not in PRODUCTS or id(q) not in in_tail:
            continue
        dqs = readers.get(q.output[0], [])
        if q.output[0] in outputs or not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        ends = [d.output[0] for d in dqs]
        if branch_reads & {q.output[0], *ends} or len(outputs & set(ends)) > 1:
            continue
        if len(readers.get(q.input[0], [])) > 1 and outputs & set(ends):
            continue  # the product's output read elsewhere too, and the pair's named a graph output
        named = next((e for e in ends if e in outputs), None)
        if named:  # the product writes the graph output's name itself
            source.output[list(source.output).index(q.input[0])] = named
        for e in ends:
            if e != named:
                renames[e] = named or q.input[0]
        drop.update(id(n) for n in (q, *dqs))
        pairs += 1
        dropped.update(i for n in (q, *dqs) for i in n.input[1:])
    if not drop:
        return 0
    nodes = [n for n in graph.node if id(n) not in drop]
    for n in nodes:
        n.input[:] = [renames.get(i, i) for i in n.input]
    outer_reads.replace_nodes(graph, nodes, dropped)
    model_file.save(model, path)
    return pairs


JOINS = ("Concat", "Add", "Sub", "Mul", "Div", "Where")  # ops whose every input is data


def decoded(graph) -> set[str]:
    """GRAPH's outputs whose tail joins tensors with a Concat: a decoded detection (box coordinates
    beside class scores, [N, 4 + classes, anchors]), judged by SQNR ("other"), not as a sequence of
    class scores."""
    return tail_reaches(graph, graph.output, lambda k: graph.node[k].op_type == "Concat")


def tail_reaches(graph, outputs, hit) -> set[str]:
    """The names of OUTPUTS (GRAPH's value infos) from which a walk back through the tail reaches a
    node index for which HIT is true. Only data inputs are followed (a Reshape's shape, often a
    Concat, is not)."""
    in_tail = set(tail(graph))
    producer = {o: k for k, n in enumerate(graph.node) for o in n.output}
    found = set()
    for out in outputs:
        todo, seen = [out.name], set()
        while todo:
            k = producer.get(todo.pop())
            if k is None or k in seen or k not in in_tail:
                continue
            seen.add(k)
            if hit(k):
                found.add(out.name)
                break
            node = graph.node[k]
            todo.extend(node.input if node.op_type in JOINS else node.input[:1])
    return found
