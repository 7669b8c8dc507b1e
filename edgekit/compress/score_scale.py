"""A constant scale on attention scores folded into the query projection's weights and bias.

BERT-style exports scale the scores after Q @ K^T (a Mul or Div by sqrt(d) on the MatMul's output),
others scale Q itself before it. In fp32 ONNX Runtime folds the first into FusedMatMul's alpha; in
INT8 the MatMul becomes MatMulIntegerToFloat, which has none, so the scale stays a float Mul over
every score (all-MiniLM-L6-v2 on an AMX Xeon: 6 x 27 us a sentence). (Q @ K^T) * c = (c Q) @ K^T,
and c Q is the projection that makes Q, its weights and bias times c: folded there, the Mul is
gone, and Q's per-tensor INT8 range scales with it (the same levels). ORT's quantizer and NNCF keep
the Mul; what edgekit adds is the fold, exact up to fp32 rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import model_file, outer_reads
from edgekit.compress.input_grid import MOVES  # what lies between a projection and Q @ K^T


def fold(src: Path, dst: Path) -> int:
    """Write SRC to DST with each Mul or Div by one positive float constant folded into the
    MatMul (+ Add of a constant bias) that makes its input, where the way there holds only ops that
    move values (MOVES) and at most one MatMul of two activations (the scores), each read by the
    next alone; how many (0: DST not written)."""
    import onnx
    from onnx import TensorProto, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    keep = {o.name for o in graph.output} | outer_reads.branch_reads(graph)
    readers: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            readers[name] = readers.get(name, 0) + 1
    producer = {o: n for n in graph.node for o in n.output}

    def owned(name: str) -> bool:
        """NAME is a float initializer only one node reads."""
        init = inits.get(name)
        return init is not None and init.data_type == TensorProto.FLOAT and readers.get(name) == 1

    def alone(name: str):
        """The node that makes NAME, where only one node reads it and it is no output."""
        return producer.get(name) if readers.get(name) == 1 and name not in keep else None

    folded, drop, constants = 0, set(), set()
    for node in graph.node:
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2 or node.input[1] not in inits:
            continue
        if node.output[0] in keep:
            continue
        c = numpy_helper.to_array(inits[node.input[1]])
        if c.size != 1 or not np.isfinite(c).all() or float(c.reshape(-1)[0]) <= 0:
            continue
        c = float(c.reshape(-1)[0]) if node.op_type == "Mul" else 1 / float(c.reshape(-1)[0])
        at, scores = alone(node.input[0]), False
        while at is not None:
            if at.op_type == "MatMul" and not scores and not any(i in inits for i in at.input):
                at, scores = alone(at.input[0]), True  # (Q @ K^T) c = (c Q) @ K^T
            elif at.op_type in MOVES:
                at = alone(at.input[0])
            else:
                break
        bias = None
        if at is not None and at.op_type == "Add" and (k := _constant_side(at, inits)) is not None:
            bias, at = (at, k), alone(at.input[1 - k])
        if at is None or at.op_type != "MatMul":
            continue
        names = [at.input[1], *([bias[0].input[bias[1]]] if bias else [])]
        if not all(owned(name) for name in names):
            continue
        for name in names:
            scaled = (numpy_helper.to_array(inits[name]) * np.float32(c)).astype(np.float32)
            inits[name].CopyFrom(numpy_helper.from_array(scaled, name))
        outer_reads.rename(graph, node.output[0], node.input[0])
        readers[node.input[0]] = readers.pop(node.output[0], 0)  # the Mul's readers read its input now
        drop.add(id(node))
        constants.add(node.input[1])
        folded += 1
    if not folded:
        return 0
    outer_reads.replace_nodes(graph, [n for n in graph.node if id(n) not in drop], constants)
    model_file.save(model, dst)
    return folded


def _constant_side(add, inits: dict) -> int | None:
    """Which input of ADD is a float initializer (its bias), if exactly one is."""
    found = [k for k, name in enumerate(add.input) if name in inits]
    return found[0] if len(add.input) == 2 and len(found) == 1 else None
