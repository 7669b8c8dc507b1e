"""A model whose outputs have a data-dependent size (a detector with NonMaxSuppression in the graph:
[K, 6] detections, K found per image) is compressed and judged without that selection step, which
is then put back: the passes see the tensors the selection reads (boxes and scores, fixed in shape),
where two models' outputs can be compared value by value; the selection itself (integer and
indexing ops, nothing INT8 computes) runs as exported, and its outputs are compared as sets. An
output that is no tensor (a sequence of maps: skl2onnx's ZipMap of each classifier's probabilities)
is cut and put back the same way: the passes judge the tensor it is made from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.compress import model_file, value_types
from edgekit.compress.outer_reads import reads, subgraphs

# ops whose output size depends on the values they read
DATA_DEPENDENT = ("NonMaxSuppression", "NonZero", "Unique", "Compress")


@dataclass(frozen=True)
class Split:
    """What the passes judge instead of the model's outputs (CUT: the tensors the selection
    reads), and the model's own outputs, restored when the selection is put back."""

    cut: list[str]
    outputs: list[str]
    ops: list[str]  # the ops the tail starts at, by type
    made_into: list[str]  # the cut tensors made into an output that is no tensor (judged by their kind)


def _tail(graph) -> list[int]:
    """Indices of GRAPH's nodes at or downstream of a data-dependent op or of one that makes an
    output no tensor, and of the nodes before them that only they read and that compute from what
    the selection reads or from constants (a Squeeze or the Shape of the boxes; not the decoding
    that makes the boxes), in topological order."""
    after: set[str] = set()
    found = set()
    starts = _starts(graph)
    for k, node in enumerate(graph.node):
        if node.op_type in starts or after.intersection(_nodereads(node)):
            found.add(k)
            after.update(node.output)
    readers: dict[str, set[int]] = {}
    for k, node in enumerate(graph.node):
        for name in _nodereads(node):
            readers.setdefault(name, set()).add(k)
    outputs = {o.name for o in graph.output}
    only = set()  # nodes whose every reader is in the tail or among these (readers first)
    for k in reversed(range(len(graph.node))):
        node = graph.node[k]
        if k in found or subgraphs(node) or outputs.intersection(node.output):
            continue
        read_by = set().union(*(readers.get(o, set()) for o in node.output))
        if read_by and read_by <= found | only:
            only.add(k)
    known = {i for k in found for i in _nodereads(graph.node[k])} - after
    known |= {t.name for t in graph.initializer} | {""}
    moved = set()
    for k in sorted(only):  # producers first: those computed from what the selection reads
        if set(graph.node[k].input) <= known:
            moved.add(k)
            known.update(graph.node[k].output)
    found |= moved
    while stay := {
        k for k in moved if any(r not in found for o in graph.node[k].output for r in readers.get(o, ()))
    }:
        moved -= stay  # read by a node left before the selection: it stays there too
        found -= stay
    return sorted(found)


def split(src: Path, head: Path) -> Split | None:
    """Write SRC without its selection to HEAD, its outputs the tensors the selection reads and the
    model's outputs that do not depend on it; None (nothing written) where no output is sized by
    the data."""
    import onnx

    model = onnx.load(str(src))
    graph = model.graph
    tail = _tail(graph)
    made_in_tail = {o for k in tail for o in graph.node[k].output}
    outputs = [o.name for o in graph.output]
    if not made_in_tail.intersection(outputs):
        return None
    inputs = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    made_before = {o for k, n in enumerate(graph.node) if k not in set(tail) for o in n.output}
    read_by_tail = [i for k in tail for i in _nodereads(graph.node[k])]
    cut = list(dict.fromkeys(i for i in read_by_tail if i in made_before and i not in inputs))
    kept = [o for o in outputs if o not in made_in_tail]
    ops = sorted({graph.node[k].op_type for k in tail} & _starts(graph))
    tensorless = _tensorless(graph)
    made_into = [i for n in graph.node if tensorless.intersection(n.output) for i in n.input if i in cut]
    for k in reversed(tail):
        del graph.node[k]
    read = reads(graph) | {i.name for i in graph.input}
    for t in [t for t in graph.initializer if t.name not in read]:  # the selection's own (rejoin)
        graph.initializer.remove(t)
    del graph.output[:]
    graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.UNDEFINED, None) for n in cut)
    graph.output.extend(onnx.ValueInfoProto(name=n) for n in kept)
    _typed(model)
    model_file.save(model, head)
    return Split(cut=[*cut, *kept], outputs=outputs, ops=ops, made_into=made_into)


def _starts(graph) -> set[str]:
    """The op types a tail starts at: the data-dependent ones and those that make an output of
    GRAPH that is no tensor (ZipMap's sequence of maps, a SequenceConstruct)."""
    tensorless = _tensorless(graph)
    return set(DATA_DEPENDENT) | {n.op_type for n in graph.node if tensorless.intersection(n.output)}


def _tensorless(graph) -> set[str]:
    """GRAPH's outputs that are no tensor (a sequence, a map)."""
    return {o.name for o in graph.output if not o.type.HasField("tensor_type")}


def _nodereads(node) -> list[str]:
    """NODE's inputs, then what its subgraphs read from outside them."""
    inner = sorted(set().union(*(reads(g) for g in subgraphs(node)))) if subgraphs(node) else []
    return [*node.input, *inner]


def _typed(model) -> None:
    """The head's outputs typed and shaped by ONNX shape inference (ORT needs an output's type), and
    typed as ONNX Runtime types them where ONNX cannot (an ai.onnx.ml LinearClassifier's scores)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    for out in model.graph.output:
        if out.name in known and known[out.name].type.tensor_type.elem_type:
            out.CopyFrom(known[out.name])
    untyped = [o.name for o in model.graph.output if not o.type.tensor_type.elem_type]
    if untyped:
        try:
            found = value_types.ort_types(model, untyped)
        except Exception:  # ORT cannot load the head: left as it was, its load names why later
            return
        for out in model.graph.output:
            if out.name in found:
                out.CopyFrom(onnx.helper.make_tensor_value_info(out.name, found[out.name], None))


def rejoin(full: Path, head: Path, dst: Path, split_: Split) -> None:
    """Write DST: the compressed HEAD with FULL's selection put back after it (its nodes and the
    initializers only they read), the outputs FULL's again."""
    import onnx

    original = onnx.load(str(full))
    model = onnx.load(str(head))
    graph = model.graph
    tail = [original.graph.node[k] for k in _tail(original.graph)]
    have = {t.name for t in graph.initializer}
    needed = {i for n in tail for i in _nodereads(n)}
    graph.initializer.extend(t for t in original.graph.initializer if t.name in needed and t.name not in have)
    graph.node.extend(tail)
    del graph.output[:]
    graph.output.extend(original.graph.output)
    model_file.save(model, dst)


def compare(ref: list[np.ndarray], out: list[np.ndarray]) -> dict:
    """Per-sample outputs of the full models, REF (fp32) against OUT: for each output the share of
    samples with as many rows, and for integer outputs (selected indices) the mean overlap of the
    two sets of rows (intersection over union; 1 where both are empty), also over only the samples
    where fp32 selected something (most photos hold nothing a detector looks for)."""
    same = np.mean([r.shape == o.shape for r, o in zip(ref, out, strict=True)])
    result = {"same_count": float(same)}
    if ref and np.issubdtype(ref[0].dtype, np.integer):
        overlaps, selected = [], []
        for r, o in zip(ref, out, strict=True):
            a, b = _rows(r), _rows(o)
            overlaps.append(1.0 if not a | b else len(a & b) / len(a | b))
            if a:
                selected.append(overlaps[-1])
        result["rows_iou"] = float(np.mean(overlaps))
        if selected:
            result |= {"rows_iou_selected": float(np.mean(selected)), "selected_samples": len(selected)}
    return result


def _rows(array: np.ndarray) -> set[tuple]:
    """The rows of ARRAY (its first axis), as a set."""
    flat = array.reshape(array.shape[0], int(np.prod(array.shape[1:]))) if array.ndim else array.reshape(1, 1)
    return {tuple(row.tolist()) for row in flat}
