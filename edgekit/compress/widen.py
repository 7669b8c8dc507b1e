"""An fp16 ONNX model computed in fp32 for INT8, its fp16 inputs and outputs kept: ONNX Runtime's
static quantizer calibrates and scales float32 tensors, and on a model exported in fp16 (ORT's own
float16 converter, a half-precision export) it quantized from fp16 tensors and lost 12-18 points of
top-1 agreement on MobileNetV2. Widening fp16 weights to fp32 is exact, so the INT8 model starts
from the same function; a Cast at each fp16 input and output keeps the interface the user feeds."""

from __future__ import annotations

from pathlib import Path

from edgekit.compress import model_file
from edgekit.compress.outer_reads import rename, subgraphs

TYPED_ATTRIBUTES = ("to", "dtype")  # Cast's target, the generators' (RandomNormal, EyeLike) output type


def widened(src: Path, dst: Path) -> int:
    """Write SRC to DST computing in fp32 where it computed in fp16; how many fp16 weights and
    constants were widened (0: none, nothing written)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(src))
    graph = model.graph
    halves = TensorProto.FLOAT16
    half_inputs = [vi.name for vi in graph.input if vi.type.tensor_type.elem_type == halves]
    half_outputs = [vi.name for vi in graph.output if vi.type.tensor_type.elem_type == halves]
    count = _widen(graph)
    if not count:
        return 0
    first, last = [], []
    for name in half_inputs:
        rename(graph, name, f"{name}_edgekit_fp32")
        first.append(helper.make_node("Cast", [name], [f"{name}_edgekit_fp32"], to=TensorProto.FLOAT))
    for name in half_outputs:
        inner = f"{name}_edgekit_fp32"
        rename(graph, name, inner)  # its readers inside the graph, and the output's name: set back
        next(vi for vi in graph.output if vi.name == inner).name = name
        for node in graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
        last.append(helper.make_node("Cast", [inner], [name], to=halves))
    nodes = [*first, *graph.node, *last]
    del graph.node[:]
    graph.node.extend(nodes)
    model_file.save(model, dst)
    return count


def _widen(graph, interface: bool = False) -> int:
    """fp16 weights, constants, Cast targets and value types of GRAPH (and its subgraphs) made fp32;
    its own inputs and outputs too where INTERFACE (a subgraph's); how many tensors were widened."""
    from onnx import TensorProto

    halves = TensorProto.FLOAT16
    count = 0
    for k, t in enumerate(graph.initializer):
        if t.data_type == halves:
            graph.initializer[k].CopyFrom(_fp32(t))
            count += 1
    types = [*graph.value_info, *((*graph.input, *graph.output) if interface else ())]
    for vi in types:
        if vi.type.tensor_type.elem_type == halves:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in graph.node:
        for a in node.attribute:
            if a.name in TYPED_ATTRIBUTES and a.type == a.INT and a.i == halves:
                a.i = TensorProto.FLOAT
            elif a.type == a.TENSOR and a.t.data_type == halves:  # Constant, ConstantOfShape
                a.t.CopyFrom(_fp32(a.t))
                count += 1
        for g in subgraphs(node):
            count += _widen(g, interface=True)
    return count


def _fp32(t):
    """The fp16 TensorProto T as fp32, same name and values (every fp16 value is an fp32 one)."""
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(t).astype("float32"), t.name)
