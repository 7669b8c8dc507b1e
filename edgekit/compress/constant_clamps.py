"""Max or Min of a tensor and one constant value, written as the Clip it is. ONNX Runtime has no INT8
Max or Min: each ran in float between a DequantizeLinear and a QuantizeLinear, while its quantizer
removes a Clip after a quantized op into the QuantizeLinear's range. TensorFlow writes clamps so
(`tf.math.maximum(x, -0.4)` after every LeakyReLU of Google's speech embedding, the network
openWakeWord runs): its INT8 model spent more time in Max and its Q/DQ than in its convolutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compress import model_file, outer_reads

BOUND = {"Max": 1, "Min": 2}  # the Clip input each one's constant becomes: min for Max, max for Min


def as_clip(src: Path, dst: Path) -> int:
    """Write SRC to DST with each float Max/Min of a tensor and a one-element constant (that does not
    widen the tensor's rank by broadcasting) as a Clip; how many (0: DST not written)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    if model_file.default_opset(model) < 11:  # Clip's bounds are inputs from opset 11
        return 0
    constants = {i.name: i for i in graph.initializer}
    constants |= {
        n.output[0]: n.attribute[0].t for n in graph.node if n.op_type == "Constant" and n.attribute
    }
    if not any(n.op_type in BOUND and {*n.input} & constants.keys() for n in graph.node):
        return 0
    ranks = model_file.ranks(model, onnx.TensorProto.FLOAT)  # none known: nothing rewritten
    nodes, added, bounds = [], [], set()
    for n in graph.node:
        clip = _clip(n, constants, ranks) if n.op_type in BOUND and len(n.input) == 2 else None
        if clip is None:
            nodes.append(n)
            continue
        x, old, value = clip
        bounds.add(old)
        bound = numpy_helper.from_array(np.array(value, np.float32), f"{n.output[0]}_edgekit_bound")
        inputs = [x, "", ""]
        inputs[BOUND[n.op_type]] = bound.name
        nodes.append(helper.make_node("Clip", inputs[: BOUND[n.op_type] + 1], list(n.output), n.name))
        added.append(bound)
    if not added:
        return 0
    outer_reads.replace_nodes(graph, nodes, bounds, added)  # the bounds' old tensors, where unread
    model_file.save(model, dst)
    return len(added)


def _clip(node, constants: dict, ranks: dict[str, int]) -> tuple[str, str, float] | None:
    """(the tensor, the constant's name, the bound) where NODE is a Max/Min of a float tensor of
    known rank and a float one-element constant of no larger rank; else None."""
    from onnx import TensorProto, numpy_helper

    a, b = node.input
    if (a in constants) == (b in constants):
        return None
    x, name = (b, a) if a in constants else (a, b)
    c = constants[name]
    value = numpy_helper.to_array(c)
    if c.data_type != TensorProto.FLOAT or value.size != 1 or x not in ranks or value.ndim > ranks[x]:
        return None
    return x, name, float(value.reshape(()))
