"""INT8 convolutions' input channels padded to a multiple of 4, so that ONNX Runtime runs them on
its x86 symmetric INT8 convolution kernel.

ORT's QLinearConv takes its fused, AVX-512 VNNI kernel (MLAS's ConvSym, requantization in the
kernel) only where the input channels per group are a multiple of 4; a network's stem reads 3
(RGB) and falls back to im2col and a GEMM whose reduction is 27 long. Here the quantized input
gets the missing channels filled with its zero point (a Pad on the uint8 tensor: dequantized, they
are exactly 0) and the weight zero rows, so every output is computed as before, bit for bit. On an
AMX Xeon the stem of EfficientNet-Lite1 ran 0.42 -> 0.21 ms and whole INT8 models 6-10 % faster
(docs/guide/quantize.md). A wider input costs more arithmetic, though (1 -> 4 channels: 4x), and
one zoo network ran 4 % slower padded: where the model is made for this machine's CPU, the padded
model is timed against the unpadded one and kept only where faster (`choose`). ORT only: other
runtimes choose their kernels otherwise.

A depthwise convolution runs fast only where its channels are a multiple of 16: 72, 88 or 120
(MobileNetV3's, PP-LCNet's) ran 2.7-3x slower than 64, 80 or 128 (a 56x56 block, 3x3 or 7x7, ad
hoc). Its input is padded the same way, its filters with zero ones (group widened, zero bias), and
its quantized output sliced back to its channels, so its readers see what they saw. The Pad and the
Slice cost time of their own (a 56x56x72 block: 137 us against 41-160 us gained); the timing
decides, as for the stem (PP-OCR's direction classifier, 7 such layers: 0.91x unpadded).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.compress import model_file, outer_reads

ALIGN = 4  # MLAS's KernelInputChannelAlignment on x86
# ORT's symmetric kernel also wants at least 16 output channels, a multiple of its output alignment
# (4 with AVX-512, 8 with AVX2 / AVX-VNNI): 8 holds on either
MIN_OUTPUT, OUTPUT_ALIGN = 16, 8
# the CPU classes where ORT's kernel multiplies with VNNI (AVX-512 VNNI, AVX-VNNI; AMX CPUs have both);
# measured on AMX. The AVX2 classes have a kernel too, unmeasured: left as they are
CLASSES = ("x86-vnni", "x86-amx")
DEPTHWISE_ALIGN = 16  # the channels of a depthwise convolution ConvSym takes
FASTER = 1.0  # the padded model is kept below this share of the unpadded one's time


def choose(path: Path, candidate: Path, timing: Callable[[Path, Path], float] | None) -> dict:
    """Pad the QDQ model at PATH where that is faster: {} where nothing is to pad; else {padded: how
    many convolutions, kept: whether PATH is now padded} and, where TIMING (the padded model's time
    over the unpadded one's, on this CPU) is given, time_vs_unpadded. CANDIDATE: a scratch path."""
    count = pad(path, candidate)
    if not count:
        return {}
    record: dict = {"padded": count, "kept": True}
    if timing is not None:
        record["time_vs_unpadded"] = ratio = round(timing(path, candidate), 3)
        record["kept"] = ratio < FASTER
    if record["kept"]:
        candidate.replace(path)
    else:
        candidate.unlink()
    return record


def pad(path: Path, dst: Path) -> int:
    """Write to DST the QDQ model at PATH with every 2-D Conv that ORT fuses into a uint8 x int8
    QLinearConv with symmetric weights and an input channel count that is not a multiple of ALIGN
    padded; how many (0: DST is not written)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in graph.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    # tensors read where this pass cannot see: graph outputs, and names a subgraph (If, Loop) reads
    outputs = {o.name for o in graph.output} | outer_reads.branch_reads(graph)
    before: dict[int, object] = {}  # id of an input's DequantizeLinear -> the Pad to insert before it
    after: dict[int, object] = {}  # id of a depthwise output's QuantizeLinear -> the Slice after it
    added, stale = [], set()  # the new constants; the tensors whose shapes changed
    for node in graph.node:
        found = _paddable(node, producer, inits, readers, outputs)
        depthwise = None if found else _depthwise(node, producer, inits, readers, outputs)
        if found is None and depthwise is None:
            continue
        x_dq, w_dq, w = found or depthwise[:3]
        stem = f"{node.name or node.output[0]}_edgekit_channel_pad"
        if found:
            extra = -w.shape[1] % ALIGN
            wide = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)
        else:
            extra = -w.shape[0] % DEPTHWISE_ALIGN
            wide = np.concatenate([w, np.zeros((extra, *w.shape[1:]), w.dtype)])
            _widened_filters(node, w_dq, depthwise[3], inits, extra)
            after[id(depthwise[4])] = _slice_back(depthwise[4], w.shape[0], stem, added)
            stale.update(node.output)
        inits[w_dq.input[0]].CopyFrom(numpy_helper.from_array(wide, w_dq.input[0]))
        zero = numpy_helper.to_array(inits[x_dq.input[2]]).reshape(())
        pads = np.zeros(2 * w.ndim, np.int64)
        pads[w.ndim + 1] = extra  # the end of the channel axis
        added += [
            numpy_helper.from_array(pads, f"{stem}_pads"),
            numpy_helper.from_array(zero, f"{stem}_value"),
        ]
        reads = [x_dq.input[0], f"{stem}_pads", f"{stem}_value"]
        before[id(x_dq)] = helper.make_node("Pad", reads, [f"{stem}_out"], name=stem, mode="constant")
        x_dq.input[0] = f"{stem}_out"
        stale.add(x_dq.output[0])
    if not before:
        return 0
    nodes = []
    for n in graph.node:
        nodes += [m for m in (before.get(id(n)), n, after.get(id(n))) if m is not None]
    outer_reads.replace_nodes(graph, nodes, set(), added)
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    model_file.save(model, dst)
    return len(before)


def _paddable(node, producer: dict, inits: dict, readers: dict, outputs: set):
    """(input DequantizeLinear, weight DequantizeLinear, int8 weight) of NODE where padding it
    applies (each read by NODE alone, NODE's output read by one QuantizeLinear alone), else None."""
    from onnx import helper, numpy_helper

    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    if next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1) != 1:
        return None
    x_dq, w_dq = producer.get(node.input[0]), producer.get(node.input[1])
    if any(n is None or n.op_type != "DequantizeLinear" for n in (x_dq, w_dq)):
        return None
    constants = (*x_dq.input[1:], *w_dq.input)
    if len(x_dq.input) < 3 or len(w_dq.input) < 3 or any(x not in inits for x in constants):
        return None
    zero = numpy_helper.to_array(inits[x_dq.input[2]])
    w = numpy_helper.to_array(inits[w_dq.input[0]])
    w_zero = numpy_helper.to_array(inits[w_dq.input[2]])
    if zero.dtype != np.uint8 or zero.size != 1 or w.dtype != np.int8 or w.ndim != 4 or w_zero.any():
        return None
    if w.shape[1] % ALIGN == 0 or w.shape[0] < MIN_OUTPUT or w.shape[0] % OUTPUT_ALIGN:
        return None
    single = (x_dq.output[0], w_dq.output[0], w_dq.input[0], node.output[0])
    if any(len(readers.get(t, ())) != 1 or t in outputs for t in single):
        return None
    if readers[node.output[0]][0].op_type != "QuantizeLinear":  # else ORT runs it as a float Conv
        return None
    return x_dq, w_dq, w


def _depthwise(node, producer: dict, inits: dict, readers: dict, outputs: set):
    """(input DequantizeLinear, weight DequantizeLinear, int8 weight, bias DequantizeLinear or None,
    output QuantizeLinear) of NODE where it is a 2-D depthwise Conv that ORT fuses into a
    uint8 x int8 QLinearConv with symmetric weights and channels not a multiple of DEPTHWISE_ALIGN
    (each of its tensors read by it alone), else None."""
    from onnx import helper, numpy_helper

    if node.op_type != "Conv" or len(node.input) < 2:
        return None
    x_dq, w_dq = producer.get(node.input[0]), producer.get(node.input[1])
    b_dq = producer.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if any(n is None or n.op_type != "DequantizeLinear" for n in (x_dq, w_dq)):
        return None
    constants = (*x_dq.input[1:], *w_dq.input)
    if len(x_dq.input) < 3 or len(w_dq.input) < 3 or any(x not in inits for x in constants):
        return None
    if len(node.input) > 2 and node.input[2] and (b_dq is None or b_dq.op_type != "DequantizeLinear"):
        return None  # a float bias: ORT's quantizer writes an int32 one
    if b_dq is not None and any(x not in inits for x in b_dq.input):
        return None
    zero = numpy_helper.to_array(inits[x_dq.input[2]])
    w = numpy_helper.to_array(inits[w_dq.input[0]])
    w_zero = numpy_helper.to_array(inits[w_dq.input[2]])
    group = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
    if zero.dtype != np.uint8 or zero.size != 1 or w.dtype != np.int8 or w.ndim != 4 or w_zero.any():
        return None
    if w.shape[1] != 1 or group != w.shape[0] or group < DEPTHWISE_ALIGN or group % DEPTHWISE_ALIGN == 0:
        return None
    single = [x_dq.output[0], w_dq.output[0], *w_dq.input, node.output[0]]
    single += [*b_dq.input, b_dq.output[0]] if b_dq is not None else []
    if any(len(readers.get(t, ())) != 1 or t in outputs for t in single):
        return None
    q = readers[node.output[0]][0]
    if q.op_type != "QuantizeLinear" or q.output[0] in outputs:  # else ORT runs it as a float Conv
        return None
    return x_dq, w_dq, w, b_dq, q


def _widened_filters(node, w_dq, b_dq, inits: dict, extra: int) -> None:
    """NODE's group, its weights' per-channel scales and zero points and its int32 bias (each read by
    NODE's DequantizeLinears alone) widened by EXTRA channels: zero points and bias 0, so the new
    channels compute 0, and the last channel's scales (ORT left a filter scaled 1 unfused)."""
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == "group":
            a.CopyFrom(helper.make_attribute("group", a.i + extra))
    widened = [(w_dq.input[1], "edge"), (w_dq.input[2], "constant")]
    widened += [] if b_dq is None else list(zip(b_dq.input, ("constant", "edge", "constant"), strict=False))
    for name, mode in widened:
        value = numpy_helper.to_array(inits[name])
        if value.ndim == 1:  # per channel (a per-tensor one holds as it is)
            inits[name].CopyFrom(numpy_helper.from_array(np.pad(value, (0, extra), mode=mode), name))


def _slice_back(q, channels: int, stem: str, added: list):
    """A Slice of Q's (widened) output back to its first CHANNELS channels, under Q's output name."""
    from onnx import helper, numpy_helper

    added += [
        numpy_helper.from_array(np.array([0], np.int64), f"{stem}_starts"),
        numpy_helper.from_array(np.array([channels], np.int64), f"{stem}_ends"),
        numpy_helper.from_array(np.array([1], np.int64), f"{stem}_axes"),
    ]
    name = q.output[0]
    q.output[0] = f"{stem}_wide"
    reads = [q.output[0], f"{stem}_starts", f"{stem}_ends", f"{stem}_axes"]
    return helper.make_node("Slice", reads, [name], name=f"{stem}_slice")
