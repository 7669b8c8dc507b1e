"""LSTMs in INT8: ONNX Runtime's DynamicQuantizeLSTM (com.microsoft), int8 weights per gate row,
each step's input and hidden state quantized at run time. ORT's static quantizer has no INT8 LSTM,
so a recognizer's BiLSTM or a VAD's LSTM stayed fp32, and an LSTM-only model was refused.

ORT's `quantize_dynamic` writes this node only for LSTMs whose weights are main-graph initializers,
and rewrites every Gemm of the model into MatMul + Add on the way; what edgekit adds is the same
node for weights anywhere in scope (Constant nodes, If branches: Silero VAD's LSTM), the rest of the
static INT8 model untouched, and the choice, measured (`dynamic_matmul.choose`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.compress import model_file
from edgekit.compress.dynamic_matmul import choose
from edgekit.compress.outer_reads import reads, subgraphs
from edgekit.errors import EdgekitError

MS_DOMAIN = "com.microsoft"


def quantize(src: Path, dst: Path, seven_bit: bool = False) -> int:
    """Write SRC to DST with each LSTM whose weights are constant as a DynamicQuantizeLSTM; return
    how many. SEVEN_BIT weights (ORT's reduce_range) where the target CPU's u8 x s8 pair sums
    saturate (no VNNI): the node's products are u8 x s8 as ORT's static ones are."""
    import onnx

    model = onnx.load(str(src))
    qmax = 64 if seven_bit else 127
    count = _rewrite(model.graph, [], qmax, list(model.opset_import))
    if count:
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(MS_DOMAIN, 1))
        while _drop_unread(model.graph, reads(model.graph)):  # the weights' fp32 cones, to the leaves
            pass
    model_file.save(model, dst)
    return count


def count(path: Path) -> int:
    """LSTMs anywhere in the model at PATH (its subgraphs too)."""
    import onnx

    def walk(graph) -> int:
        return sum((n.op_type == "LSTM") + sum(walk(g) for g in subgraphs(n)) for n in graph.node)

    return walk(onnx.load(str(path), load_external_data=False).graph)


def _constants(graph) -> dict:
    """{name: TensorProto} of GRAPH's initializers and Constant nodes' values."""
    found = {t.name: t for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            found[n.output[0]] = n.attribute[0].t
    return found


def _rewrite(graph, scope: list[dict], qmax: int, opsets: list) -> int:
    """Replace GRAPH's quantizable LSTMs (weights computed from constants of GRAPH or an enclosing
    SCOPE only), then those of its subgraphs; return how many."""
    import onnx
    from onnx import numpy_helper

    scope = [_constants(graph), *scope]
    done = 0
    for i, node in enumerate(graph.node):
        for g in subgraphs(node):
            done += _rewrite(g, scope, qmax, opsets)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type != "LSTM" or attrs.get("layout", 0) != 0:  # batch-first: the node has no layout
            continue
        weights = [_folded(name, graph, scope, opsets) for name in node.input[1:3]]
        if any(w is None for w in weights):
            continue
        inputs = [node.input[0]]
        scales = []
        for name, w in zip(node.input[1:3], weights, strict=True):
            w = w.astype(np.float32)  # [directions, 4 * hidden, in]
            scale = np.maximum(np.abs(w).max(axis=2), np.finfo(np.float32).tiny) / qmax
            q = np.clip(np.rint(w / scale[..., None]), -qmax, qmax).astype(np.int8).transpose(0, 2, 1)
            base = f"{node.name or node.output[0]}_{name}"
            graph.initializer.extend(
                [
                    numpy_helper.from_array(np.ascontiguousarray(q), f"{base}_int8"),
                    numpy_helper.from_array(scale.astype(np.float32), f"{base}_scale"),
                    numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_zero_point"),
                ]
            )
            inputs.append(f"{base}_int8")
            scales += [f"{base}_scale", f"{base}_zero_point"]
        rest = [*node.input[3:8], *[""] * (8 - max(len(node.input), 3))]
        replaced = onnx.helper.make_node(
            "DynamicQuantizeLSTM",
            [*inputs, *rest, *scales],
            list(node.output),
            name=f"{node.name}_int8" if node.name else "",
            domain=MS_DOMAIN,
            **{k: v for k, v in attrs.items() if k != "layout"},
        )
        graph.node[i].CopyFrom(replaced)
        done += 1
    return done


def _drop_unread(graph, read: set[str]) -> bool:
    """Remove GRAPH's (and its subgraphs') initializers and nodes nothing reads (ONNX ops have no
    side effects); whether anything was removed."""
    kept = read | {o.name for o in graph.output} | {i.name for i in graph.input}  # an input's default stays
    tensors = [t for t in graph.initializer if t.name not in kept]
    nodes = [n for n in graph.node if not kept.intersection(n.output)]
    for t in tensors:
        graph.initializer.remove(t)
    for n in nodes:
        graph.node.remove(n)
    inner = [_drop_unread(g, read) for n in graph.node for g in subgraphs(n)]
    return bool(tensors or nodes or any(inner))


def _folded(name: str, graph, scope: list[dict], opsets: list, limit: int = 64):
    """The value of NAME in GRAPH where it is a constant of SCOPE or computed from such constants
    by at most LIMIT nodes of GRAPH (torch's LSTM export reorders the gates by Slice and Concat);
    None where it depends on anything else. Computed by ONNX's reference evaluator."""
    import onnx
    from onnx import numpy_helper
    from onnx.reference import ReferenceEvaluator

    producers = {o: n for n in graph.node for o in n.output}
    cone, leaves, todo = [], {}, [name]
    while todo:
        t = todo.pop()
        if not t or t in leaves:
            continue
        const = next((s[t] for s in scope if t in s), None)
        if const is not None:
            leaves[t] = const
            continue
        node = producers.get(t)
        if node is None or subgraphs(node) or len(cone) >= limit:
            return None
        if node not in cone:
            cone.append(node)
            todo.extend(node.input)
    if not cone:
        return numpy_helper.to_array(leaves[name])
    order = {id(n): k for k, n in enumerate(graph.node)}
    nodes = sorted(cone, key=lambda n: order[id(n)])
    inits = []
    for t, tensor in leaves.items():  # a Constant's value keeps no name: named for its readers
        inits.append(onnx.TensorProto())
        inits[-1].CopyFrom(tensor)
        inits[-1].name = t
    out = onnx.helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)
    sub = onnx.helper.make_graph(nodes, "weights", [], [out], inits)
    return ReferenceEvaluator(onnx.helper.make_model(sub, opset_imports=opsets)).run(None, {})[0]


def consider(
    static: Path,
    static_quality: dict | None,
    mode: str,
    verify: Callable[[Path], dict],
    timing: Callable[[Path, Path], dict] | None,
    seven_bit: bool,
) -> tuple[dict | None, dict]:
    """The verification of the model at STATIC and the record of the choice: its LSTMs quantized
    dynamically where MODE "auto" finds that as faithful as STATIC_QUALITY (None: nothing else was
    quantized, so only the floors that follow judge it) and faster (TIMING; None: not this
    machine's model, kept only where there is no other INT8), or "always"."""
    made = {}

    def make(path: Path) -> None:
        made["lstms"] = quantize(static, path, seven_bit)
        if not made["lstms"]:
            raise EdgekitError("no LSTM has constant weights (they are computed from the inputs)")

    quality, record, chosen = choose(make, static, static_quality, mode, verify, timing, "LSTM")
    record = {**record, "dynamic_lstms": made.get("lstms", 0), "seven_bit_weights": seven_bit}
    return quality, {**record, "recipe": "dynamic LSTM (DynamicQuantizeLSTM)" if chosen else "fp32 LSTM"}
