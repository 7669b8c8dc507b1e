"""Writing an ONNX model a pass made: its tensors go to a .data file beside it once the model
nears protobuf's 2 GiB limit, which a single serialized message cannot pass."""

from __future__ import annotations

from pathlib import Path

import onnx

PROTOBUF_LIMIT = 2**31 - 2**24  # 2 GiB less headroom for the graph's own bytes


def default_opset(model: onnx.ModelProto) -> int:
    """The opset of the default (ai.onnx) domain; 0 when the model imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def too_large(model: onnx.ModelProto) -> bool:
    """Whether MODEL cannot be held in one protobuf message (a file or an in-memory session)."""
    return model.ByteSize() > PROTOBUF_LIMIT


def ranks(model: onnx.ModelProto, elem_type: int | None = None) -> dict[str, int]:
    """The rank of every tensor of MODEL (of ELEM_TYPE only, where given) that ONNX's shape inference
    knows; {} where it does not know an op of MODEL."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:
        return {}
    infos = [*inferred.input, *inferred.value_info, *inferred.output]
    return {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in infos
        if v.type.tensor_type.HasField("shape") and elem_type in (None, v.type.tensor_type.elem_type)
    }


def save(model: onnx.ModelProto, path: Path) -> None:
    """Write MODEL to PATH, its tensors in PATH.data when it is too large for one message."""
    large = too_large(model)
    location = Path(path).name + ".data" if large else None
    onnx.save(model, str(path), save_as_external_data=large, location=location)
