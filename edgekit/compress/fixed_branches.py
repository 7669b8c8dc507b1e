"""Control flow that a constant input decides, decided before INT8. Silero VAD's file picks its
16 kHz or 8 kHz network in an If on its `sr` input, so every layer is inside a branch, where ONNX
Runtime's static quantizer does not reach (nothing was quantized: edgekit refused it). Where the
data holds that input constant (`--calib-const sr=16000`, or a 0-d array in a .npz), the If
conditions computed from constants alone are folded, each taken branch inlined (onnxscript's
constant folder, restricted to those conditions and Ifs), and the input stays declared, unread:
callers feed it as before; the model is the one for that value, which the manifest records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import model_file


def decided(graph, constants: set[str]) -> list[str]:
    """Names of GRAPH's If nodes whose condition is computed from CONSTANTS (inputs), initializers
    and Constant nodes alone, reading at least one of CONSTANTS."""
    known = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}

    def cone(name: str, seen: set[str]) -> bool | None:
        """Whether NAME is constant (True: and reads a given constant), or None where it is not."""
        if name in constants:
            return True
        if name in known or name == "":
            return False
        node = producer.get(name)
        if node is None or name in seen or node.op_type in ("If", "Loop", "Scan"):
            return None
        reads = [cone(i, seen | {name}) for i in node.input]
        return None if None in reads else any(reads)

    return [n.name for n in graph.node if n.op_type == "If" and cone(n.input[0], set())]


def fold(src: Path, dst: Path, constants: dict[str, np.ndarray]) -> dict:
    """Write SRC to DST with the Ifs that CONSTANTS decide inlined; what was done ({} where
    nothing: DST is not written)."""
    import onnx
    import onnxscript.optimizer as optimizer
    from onnx import numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    for k, node in enumerate(graph.node):  # the folder is told which nodes by name
        node.name = node.name or f"edgekit_node_{k}"
    ifs = decided(graph, set(constants))
    if not ifs:
        return {}
    cone = _cone(graph, ifs)
    declared = [vi for vi in graph.input if vi.name in constants]
    for vi in declared:
        graph.input.remove(vi)
        value = np.asarray(constants[vi.name])
        graph.initializer.append(numpy_helper.from_array(value, vi.name))
    kept = [onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in declared]
    optimizer.fold_constants(model, should_fold=lambda node: node.name in cone)
    optimizer.remove_unused_nodes(model)
    model.graph.input.extend(kept)  # declared as before, read by nothing
    model_file.save(model, dst)
    return {"ifs_inlined": len(ifs), "for": {k: np.asarray(v).tolist() for k, v in constants.items()}}


def _cone(graph, ifs: list[str]) -> set[str]:
    """The If nodes IFS and the nodes computing their conditions: what the folder may fold."""
    producer = {o: n for n in graph.node for o in n.output}
    names, todo = set(ifs), [n.input[0] for n in graph.node if n.name in ifs]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.name not in names:
            names.add(node.name)
            todo.extend(node.input)
    return names
