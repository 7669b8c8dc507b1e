"""A 3-D convolution over one frame, written as the 2-D convolution it is, before INT8.

Video models run on single frames (RivaGAN's watermark encoder and decoder take [N, 3, 1, H, W])
convolve with 1 x k x k kernels: a Conv on 5-D tensors whose depth is 1 throughout. ONNX Runtime
computes it 1.6x (fp32) to 2.2x (INT8) slower than the same Conv on 4-D tensors, and its INT8
kernel is slower than fp32 where the input has few channels (3 -> 32 channels, 11 x 11, 256 x 256:
68 ms INT8 vs 16 ms fp32 as 3-D, 8.7 vs 8.1 ms as 2-D; VNNI EPYC). Squeezing the depth axis before
the Conv and putting it back after computes the same numbers (the kernel sees one plane either
way), so the INT8 model gets ORT's 2-D kernels (NHWC, VNNI).

A 3-D convolution over several frames stays 3-D; where few channels come in (a video network's
stem) ORT's INT8 kernel is slower than its fp32 one, and `narrow` names those to leave fp32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from edgekit.compress import model_file

# input channels per group below which ORT's INT8 3-D convolution loses to its fp32 one (VNNI EPYC,
# 3x3x3 kernels, 8 frames of 56x56 or 112x112: 3 channels in 3.0-3.6x fp32's time, 8 1.37x, 16 0.69x,
# 32 0.50x; a 1 x 3 x 3 kernel on 64 channels 0.41x)
NARROW = 16


def flatten(src: Path, dst: Path) -> int:
    """Write SRC to DST with each Conv whose input, kernel and output have depth 1 computed in 2-D
    between a Squeeze and an Unsqueeze of the depth axis; how many (0: none, nothing written)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    if not any(_kernel_depth_one(n, inits) for n in graph.node):  # no shape inference for the rest
        return 0
    depth_one = _depth_one(model, Path(dst).parent)
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    new_opset = model_file.default_opset(model) >= 13  # Squeeze's axes became an input in opset 13
    nodes, count = [], 0
    for n in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if not _kernel_depth_one(n, inits) or not _planar(attrs):
            nodes.append(n)
            continue
        if n.input[0] not in depth_one or n.output[0] not in depth_one:
            nodes.append(n)
            continue
        w = inits[n.input[1]]
        weight = numpy_helper.to_array(w)[:, :, 0]
        name = w.name if readers[w.name] == 1 else f"{w.name}_edgekit_2d"
        if name in inits:
            inits[name].CopyFrom(numpy_helper.from_array(weight, name))
        else:
            graph.initializer.append(numpy_helper.from_array(weight, name))
            inits[name] = graph.initializer[-1]
        flat_in, flat_out = f"{n.output[0]}_edgekit_2d_in", f"{n.output[0]}_edgekit_2d_out"
        axes = f"{n.output[0]}_edgekit_depth_axis"
        if new_opset:
            graph.initializer.append(numpy_helper.from_array(np.array([2], np.int64), axes))
            squeeze = helper.make_node("Squeeze", [n.input[0], axes], [flat_in])
            unsqueeze = helper.make_node("Unsqueeze", [flat_out, axes], [n.output[0]])
        else:
            squeeze = helper.make_node("Squeeze", [n.input[0]], [flat_in], axes=[2])
            unsqueeze = helper.make_node("Unsqueeze", [flat_out], [n.output[0]], axes=[2])
        conv = helper.make_node(
            "Conv", [flat_in, name, *n.input[2:]], [flat_out], name=n.name, **_two_d(attrs)
        )
        nodes.extend([squeeze, conv, unsqueeze])
        count += 1
    if not count:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    model_file.save(model, dst)
    return count


def narrow(graph) -> list[int]:
    """The indices of GRAPH's 3-D Convs (5-D constant weights) with fewer than NARROW input channels
    per group."""
    inits = {i.name: i for i in graph.initializer}
    return [k for k, n in enumerate(graph.node) if (dims := _weight_3d(n, inits)) and dims[1] < NARROW]


def _kernel_depth_one(node, inits: dict) -> bool:
    """Whether NODE is a Conv whose constant weight is 5-D with a kernel of depth 1."""
    dims = _weight_3d(node, inits)
    return dims is not None and dims[2] == 1


def _weight_3d(node, inits: dict):
    """The dims of NODE's constant weight where NODE is a 3-D Conv (a 5-D weight in INITS), else None."""
    if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
        return None
    dims = inits[node.input[1]].dims
    return dims if len(dims) == 5 else None


def _depth_one(model, scratch: Path) -> set[str]:
    """The 5-D tensors of MODEL whose axis 2 ONNX's shape inference, or ONNX Runtime's symbolic one
    (which follows shapes through Expand, Where and Concat: RivaGAN's encoder), knows to be 1; the
    latter run in SCRATCH, where it leaves a file when it gives up."""
    import onnx

    found = set()
    for infer in (onnx.shape_inference.infer_shapes, _symbolic):
        try:
            with contextlib.chdir(scratch):
                inferred = infer(model).graph
        except Exception:
            continue
        for v in [*inferred.input, *inferred.value_info, *inferred.output]:
            dims = v.type.tensor_type.shape.dim
            if len(dims) == 5 and dims[2].HasField("dim_value") and dims[2].dim_value == 1:
                found.add(v.name)
    return found


def _symbolic(model):
    """MODEL with the shapes ONNX Runtime's symbolic shape inference gives it."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(model, auto_merge=True)


def _planar(attrs: dict) -> bool:
    """Whether a Conv of ATTRS keeps depth 1: no padding along it, explicit padding elsewhere."""
    pads = attrs.get("pads", [0] * 6)
    return attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET") and pads[0] == pads[3] == 0


def _two_d(attrs: dict) -> dict:
    """A 3-D Conv's ATTRS for the same convolution in 2-D (the depth entries dropped)."""
    out = {}
    for key, value in attrs.items():
        if key == "pads":
            out[key] = [value[1], value[2], value[4], value[5]]
        elif key in ("kernel_shape", "strides", "dilations"):
            out[key] = list(value[1:])
        elif key != "auto_pad":
            out[key] = value
    return out
