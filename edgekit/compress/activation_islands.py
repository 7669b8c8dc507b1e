"""Gated activations written out as elementwise ops that read their input twice (islands): GELU
(x * (1 + erf(x / sqrt 2)) / 2, or its tanh form), SiLU / QuickGELU (x * sigmoid(a x)), HardSwish
(x * HardSigmoid(x), or x * clip(x + 3, 0, 6) / 6) and the like.

ORT's quantizer quantizes the Mul, Add and Div inside them one by one (QLinearMul, QLinearAdd, a
DequantizeLinear and QuantizeLinear around each op it has no INT8 kernel for); PP-OCRv6's
recognizer ran its 13 GELUs as some 90 ops, and its INT8 model was no faster than fp32. Left
float between the Q/DQ of their input and output they compute as fp32 does, and, for ONNX Runtime,
the GELUs and x * sigmoid(a x) are written as its one fused op (`fuse`): ORT's own fusion does not
fire in a QDQ model (it gives each reader of a DequantizeLinear its own copy, so no pattern reads
x twice any more). An activation whose every op ORT's quantizer takes (a CNN's SiLU) is left to it.
A HardSwish has no fused op in ORT: it stays as the quantizer makes it."""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.compress import model_file, outer_reads

# elementwise ops an activation is written with (every non-constant input from the island)
ELEMENTWISE = (
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Neg", "Abs", "Erf", "Tanh", "Sigmoid",
    "HardSigmoid", "HardSwish", "Softplus", "Clip", "Relu", "LeakyRelu",
)  # fmt: skip
PROBE = np.linspace(-10, 10, 201, dtype=np.float32)  # where an island's function is identified
DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class Island:
    nodes: list[int]  # indices in the graph, in its (topological) order
    input: str  # x
    output: str  # the activation's value, the one tensor read beyond the island


def islands(graph) -> list[Island]:
    """GRAPH's gated activations: for each tensor x read by two or more elementwise nodes, the
    nodes computed from x and constants alone, where x is read at least twice among them and
    exactly one of their outputs is read beyond them. Islands do not overlap."""
    constant = constants(graph)
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(graph.node):
        for name in n.input:
            readers.setdefault(name, []).append(k)
    outputs = {o.name for o in graph.output}
    found, taken = [], set()
    for x in [*(i.name for i in graph.input), *(o for n in graph.node for o in n.output)]:
        if sum(graph.node[k].op_type in ELEMENTWISE for k in readers.get(x, ())) < 2:
            continue
        island = _closure(graph, x, readers, constant, taken)
        if len(island) < 2 or sum(x in graph.node[k].input for k in island) < 2:
            continue
        inside = set(island)
        escaping = {
            o
            for k in island
            for o in graph.node[k].output
            if o in outputs or any(j not in inside for j in readers.get(o, ()))
        }
        if len(escaping) == 1:
            found.append(Island(island, x, escaping.pop()))
            taken |= inside
    return found


def constants(graph) -> set[str]:
    """Names of GRAPH's initializers and Constant nodes' outputs."""
    return {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }


def _closure(graph, x: str, readers: dict, constant: set[str], taken: set[int]) -> list[int]:
    """The nodes computed by elementwise ops from X and constants only, in graph order."""
    reached, island, todo = {x}, set(), [x]
    while todo:
        for k in readers.get(todo.pop(), ()):
            n = graph.node[k]
            if k in island or k in taken or n.op_type not in ELEMENTWISE:
                continue
            if all(i in reached or i in constant for i in n.input if i):
                island.add(k)
                reached.update(n.output)
                todo.extend(n.output)
    return sorted(island)


def fusable(model, quantized: Collection[str]) -> list[Island]:
    """MODEL's islands that ORT has one fused op for (`fuse` writes them so after quantization),
    but those whose every op is in QUANTIZED, the op types its quantizer takes: ORT's INT8 kernels
    run them on 8 bits (QLinearSigmoid, QLinearMul), faster than DequantizeLinear, a float op and
    QuantizeLinear over the tensor (NudeNet's YOLOv8, 57 SiLUs: 7.7 ms vs 10.0 ms)."""
    opset = model_file.default_opset(model)
    return [
        i
        for i in islands(model.graph)
        if {model.graph.node[k].op_type for k in i.nodes} - set(quantized)
        and _identify(model.graph, i, opset)
    ]


def identified(model) -> set[int]:
    """Indices of MODEL's nodes in islands `fuse` can write as one op, whatever is quantized."""
    opset = model_file.default_opset(model)
    return {k for i in islands(model.graph) if _identify(model.graph, i, opset) for k in i.nodes}


def fuse(path: Path) -> dict[str, int]:
    """Rewrite the islands of the QDQ model at PATH that compute GELU (erf or tanh form) or
    x * sigmoid(a x) as ORT's Gelu, FastGelu or QuickGelu; each is identified by what it computes
    on probe values, however its exporter wrote it. ORT only (com.microsoft ops); how many of each."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    found: dict[str, int] = {}
    replaced: dict[int, object] = {}  # an island's last node -> its fused op; the rest dropped
    drop: set[int] = set()
    opset = model_file.default_opset(model)
    for island in islands(graph):
        kind = _identify(graph, island, opset)
        if kind is None:
            continue
        op, attrs = kind
        last = graph.node[island.nodes[-1]]
        name = f"{last.name or island.output}_{op}"
        replaced[island.nodes[-1]] = helper.make_node(
            op, [island.input], [island.output], name, domain=DOMAIN, **attrs
        )
        drop.update(island.nodes)
        found[op] = found.get(op, 0) + 1
    if not found:
        return {}
    read_before = {i for k in drop for i in graph.node[k].input}
    nodes = [replaced.get(k, n) for k, n in enumerate(graph.node) if k not in drop or k in replaced]
    outer_reads.replace_nodes(graph, nodes, read_before)  # the islands' constants, where unread
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    model_file.save(model, path)
    return found


def _identify(graph, island: Island, opset: int) -> tuple[str, dict] | None:
    """(ORT op, its attributes) that ISLAND computes, or None: its function on PROBE against
    GELU's two forms and x * sigmoid(a x), a read from its value at x = 1."""
    import math

    y = _evaluate(graph, island, opset)
    if y is None:
        return None
    x = PROBE.astype(np.float64)
    at_one = y[np.argmin(np.abs(x - 1))]  # x * sigmoid(a x) at x = 1 is sigmoid(a)
    alpha = float(np.log(at_one / (1 - at_one))) if 0 < at_one < 1 else None
    candidates = [
        ("Gelu", {}, 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))),
        ("FastGelu", {}, 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
    ]
    if alpha is not None and alpha > 0:
        candidates.append(("QuickGelu", {"alpha": alpha}, x / (1 + np.exp(-alpha * x))))
    for op, attrs, want in candidates:
        if np.allclose(y, want, rtol=1e-4, atol=1e-5):
            return op, attrs
    return None


def _evaluate(graph, island: Island, opset: int) -> np.ndarray | None:
    """ISLAND's output on PROBE (ONNX Runtime on the island alone, at OPSET), or None where a
    constant it reads has more than one value (a per-channel affine, not an activation) or it does
    not run. The island is written with positional names, so islands alike (a network's 13 GELUs,
    the same islands at each write of a mixed-precision search) run once."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [graph.node[k] for k in island.nodes]
    made_here = {o for n in nodes for o in n.output}
    wanted = {i for n in nodes for i in n.input if i and i != island.input} - made_here
    inits = [i for i in graph.initializer if i.name in wanted]
    made = [n for n in graph.node if n.op_type == "Constant" and set(n.output) & wanted]
    values = [onnx.numpy_helper.to_array(i) for i in inits]
    values += [onnx.numpy_helper.to_array(a.t) for n in made for a in n.attribute if a.name == "value"]
    if any(v.size != 1 for v in values) or len(values) < len(wanted):
        return None
    names = {island.input: "x", island.output: "y"}

    def positional(name: str) -> str:
        return names.setdefault(name, f"t{len(names)}") if name else ""

    copies = []
    for n in [*made, *nodes]:
        c = onnx.NodeProto()
        c.CopyFrom(n)
        c.name = ""
        c.input[:] = [positional(i) for i in n.input]
        c.output[:] = [positional(o) for o in n.output]
        copies.append(c)
    constants = []
    for i in inits:
        c = onnx.TensorProto()
        c.CopyFrom(i)
        c.name = positional(i.name)
        constants.append(c)
    sub = helper.make_graph(
        copies,
        "island",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [len(PROBE)])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        constants,
    )
    model = helper.make_model(sub, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return _run(model.SerializeToString())


@functools.lru_cache(maxsize=256)
def _run(model: bytes) -> np.ndarray | None:
    """The island model MODEL's output on PROBE, flat, or None where it does not run alone."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {"x": PROBE})
    except Exception:  # an op or type the island cannot run alone: leave it as it is
        return None
    return np.asarray(y, np.float64).reshape(-1) if np.size(y) == len(PROBE) else None


def join_hard_swish(path: Path) -> int:
    """Write PATH's x * HardSigmoid(x; 1/6, 1/2) back as the HardSwish it was (opset 14 and up):
    ORT's graph optimizations split HardSwish into the pair (ORT has no HardSwish kernel), and
    OpenVINO fuses a HardSwish into the convolution before it but not the pair: PP-LCNet's fp32
    ran 2x slower in OpenVINO after ORT's pre-processing. How many (0: PATH untouched)."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    graph = model.graph
    if model_file.default_opset(model) < 14:
        return 0
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    outputs = {o.name for o in graph.output}
    joined: dict[int, object] = {}
    dropped: set[int] = set()
    for n in graph.node:
        if n.op_type != "HardSigmoid":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        (mul, *more) = readers.get(n.output[0], [None])
        if (
            more
            or n.output[0] in outputs
            or mul is None
            or mul.op_type != "Mul"
            or sorted(mul.input) != sorted([n.input[0], n.output[0]])
            or not np.isclose(attrs.get("alpha", 0.2), 1 / 6)
            or not np.isclose(attrs.get("beta", 0.5), 0.5)
        ):
            continue
        joined[id(mul)] = helper.make_node("HardSwish", [n.input[0]], list(mul.output), mul.name)
        dropped.add(id(n))
    if not joined:
        return 0
    nodes = [joined.get(id(n), n) for n in graph.node if id(n) not in dropped]
    del graph.node[:]
    graph.node.extend(nodes)
    model_file.save(model, path)
    return len(joined)
