"""Types for the tensors ONNX's shape inference leaves untyped, as ONNX Runtime types them. ONNX
does not type the output of some ai.onnx.ml ops (skl2onnx's Scaler, the first op of a pipeline
with a StandardScaler); skl2onnx follows it with a Cast that types the rest, which ORT's optimizer
removes as a no-op, and ORT's quantizer then skipped every tensor after it ("failed to infer the
type of tensor") and quantized nothing. ORT itself types them from its kernels' signatures:
edgekit asks a session (nothing runs) and writes what it says into the graph's value_info."""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgekit.compress import model_file


def fill(src: Path, dst: Path) -> int:
    """Write DST: SRC with its untyped node outputs given the element types ONNX Runtime gives them;
    how many were typed (0: nothing written)."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    inferred = onnx.shape_inference.infer_shapes(model).graph
    known = [*inferred.value_info, *inferred.input, *inferred.output]
    typed = {v.name for v in known if v.type.tensor_type.elem_type} | {t.name for t in graph.initializer}
    missing = [o for n in graph.node for o in n.output if o and o not in typed]
    if not missing:
        return 0
    model = onnx.load(str(src))
    found = ort_types(model, missing)
    model.graph.value_info.extend(onnx.helper.make_tensor_value_info(n, t, None) for n, t in found.items())
    if found:
        model_file.save(model, dst)
    return len(found)


def ort_types(model, names: list[str]) -> dict[str, int]:
    """The ONNX element types ONNX Runtime gives the tensors NAMES of MODEL (a ModelProto with its
    weights), asked of a session that runs nothing; a sequence or a map is left out."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with tempfile.TemporaryDirectory(prefix="edgekit-types-") as tmp:
        model_file.save(probe, Path(tmp) / "probe.onnx")
        del probe
        session = ort.InferenceSession(
            str(Path(tmp) / "probe.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        outputs = session.get_outputs()
    found = {}
    for o in outputs:  # "tensor(float)"
        name = o.type[len("tensor(") : -1].upper() if o.type.startswith("tensor(") else ""
        if name in onnx.TensorProto.DataType.DESCRIPTOR.values_by_name:
            found[o.name] = onnx.TensorProto.DataType.Value(name)
    return found
