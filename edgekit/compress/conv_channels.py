"""INT8 convolutions' channels padded to what ONNX Runtime's fast x86 INT8 kernels take: a
convolution's input channels to a multiple of 4, a depthwise one's channels to a multiple of 16.

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
hoc). It gets zero filters (group widened, zero bias), and its tensors the channels to match,
without an op at run time where the graph allows: where its input is computed per channel from a
plain convolution's output (through activations, a Hardswish written as x * HardSigmoid(x), Q/DQ),
that convolution gets zero filters too; where its output flows per channel into plain convolutions
only (through a squeeze-and-excitation's pooling and gate, whose convolution gets zero filters),
those get zero weight rows. The added channels hold finite values that the zero weights cancel, so
every output is what it was, bit for bit. Elsewhere a Pad widens its quantized input and a Slice
cuts its quantized output back (a 56x56x72 block: 137 us of their own against 41-160 us gained).
PP-OCR's direction classifier (7 such layers) ran 0.90x its unpadded time, against 0.97x with a Pad
and a Slice at each; a MobileNetV3-Large (random weights) 0.91x, against 0.93x.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit.compress import graph_index, model_file, outer_reads

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
    QLinearConv with symmetric weights padded where its input channels are not a multiple of ALIGN
    or, depthwise, its channels not a multiple of DEPTHWISE_ALIGN; how many (0: DST is not written)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits, producer, readers, outputs = graph_index.index(graph)
    before: dict[int, object] = {}  # id of an input's DequantizeLinear -> the Pad to insert before it
    after: dict[int, object] = {}  # id of a depthwise output's QuantizeLinear -> the Slice after it
    added, stale, count = [], set(), 0  # the new constants; the tensors whose shapes changed
    for node in graph.node:
        found = _paddable(node, producer, inits, readers, outputs)
        depthwise = None if found else _depthwise(node, producer, inits, readers, outputs)
        if found is None and depthwise is None:
            continue
        count += 1
        x_dq, w_dq, w = found or depthwise[:3]
        stem = f"{node.name or node.output[0]}_edgekit_channel_pad"
        if found:
            extra = -w.shape[1] % ALIGN
            wide = np.concatenate([w, np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)], axis=1)
        else:
            extra = -w.shape[0] % DEPTHWISE_ALIGN
            wide = np.concatenate([w, np.zeros((extra, *w.shape[1:]), w.dtype)])
            for a in node.attribute:
                if a.name == "group":
                    a.CopyFrom(helper.make_attribute("group", a.i + extra))
            _widened_filters(w_dq, depthwise[3], inits, extra)
            stale.update(node.output)
            q = depthwise[4]
            found_after = _region(node.output[0], producer, inits, readers, outputs)
            if found_after is None:  # something reads the channels as they are: sliced back
                after[id(q)] = _slice_back(q, w.shape[0], stem, added)
            found_before = _source(x_dq.input[0], producer, inits, readers, outputs, node)
            for side in (found_after, found_before):
                if side is not None:  # computed per channel into convolutions only
                    ends, tensors, sources = side
                    _zero_rows(ends, producer, inits, extra)  # the convolutions reading the channels
                    _zero_filters(sources, producer, inits, extra)  # those writing them
                    stale.update(tensors)
            if found_before is not None:  # no Pad
                stale.add(x_dq.output[0])
                inits[w_dq.input[0]].CopyFrom(numpy_helper.from_array(wide, w_dq.input[0]))
                continue
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
    if not count:
        return 0
    nodes = []
    for n in graph.node:
        nodes += [m for m in (before.get(id(n)), n, after.get(id(n))) if m is not None]
    outer_reads.replace_nodes(graph, nodes, set(), added)
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    model_file.save(model, dst)
    return count


def _group(conv) -> int:
    """CONV's group attribute (1 where absent)."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in conv.attribute if a.name == "group"), 1)


def _bias(conv, producer: dict, inits: dict) -> tuple[bool, object]:
    """(whether CONV's bias is none or an int32 one dequantized from initializers, as ORT's quantizer
    writes it, and that DequantizeLinear or None)."""
    if len(conv.input) < 3 or not conv.input[2]:
        return True, None
    b_dq = producer.get(conv.input[2])
    if b_dq is None or b_dq.op_type != "DequantizeLinear" or any(x not in inits for x in b_dq.input):
        return False, None  # a float bias, or one computed
    return True, b_dq


def _symmetric(node, producer: dict, inits: dict):
    """(input DequantizeLinear, weight DequantizeLinear, int8 weight) of NODE where it is a 2-D Conv
    ORT fuses into a uint8 x int8 QLinearConv with symmetric weights (its constants initializers),
    else None."""
    from onnx import numpy_helper

    if node.op_type != "Conv" or len(node.input) < 2:
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
    return x_dq, w_dq, w


def _paddable(node, producer: dict, inits: dict, readers: dict, outputs: set):
    """(input DequantizeLinear, weight DequantizeLinear, int8 weight) of NODE where padding its input
    applies (_symmetric, group 1, each tensor read by NODE alone, NODE's output read by one
    QuantizeLinear alone), else None."""

    found = _symmetric(node, producer, inits)
    if found is None or _group(node) != 1:
        return None
    x_dq, w_dq, w = found
    if w.shape[1] % ALIGN == 0 or w.shape[0] < MIN_OUTPUT or w.shape[0] % OUTPUT_ALIGN:
        return None
    single = (x_dq.output[0], w_dq.output[0], w_dq.input[0], node.output[0])
    if any(len(readers.get(t, ())) != 1 or t in outputs for t in single):
        return None
    if readers[node.output[0]][0].op_type != "QuantizeLinear":  # else ORT runs it as a float Conv
        return None
    return found


def _depthwise(node, producer: dict, inits: dict, readers: dict, outputs: set):
    """(input DequantizeLinear, weight DequantizeLinear, int8 weight, bias DequantizeLinear or None,
    output QuantizeLinear) of NODE where it is a depthwise _symmetric Conv whose channels are not a
    multiple of DEPTHWISE_ALIGN (each of its tensors read by it alone, its bias int32), else None."""

    found = _symmetric(node, producer, inits)
    if found is None:
        return None
    x_dq, w_dq, w = found
    int32, b_dq = _bias(node, producer, inits)
    if not int32:
        return None
    group = _group(node)
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


def _widened_filters(w_dq, b_dq, inits: dict, extra: int) -> None:
    """A convolution's per-filter weight scales and zero points and its int32 bias (each read by its
    DequantizeLinears alone) widened by EXTRA filters: zero points and bias 0, so the new filters
    compute 0, and the last filter's scales (ORT left a filter scaled 1 unfused)."""
    from onnx import numpy_helper

    widened = [(w_dq.input[1], "edge"), (w_dq.input[2], "constant")]
    widened += [] if b_dq is None else list(zip(b_dq.input, ("constant", "edge", "constant"), strict=False))
    for name, mode in widened:
        value = numpy_helper.to_array(inits[name])
        if value.ndim == 1:  # per filter (a per-tensor one holds as it is)
            inits[name].CopyFrom(numpy_helper.from_array(np.pad(value, (0, extra), mode=mode), name))


def _zero_filters(convs: list, producer: dict, inits: dict, extra: int) -> None:
    """CONVS' int8 weights given EXTRA zero filters (zero bias): their outputs widened by as many
    channels, each computing 0."""
    from onnx import numpy_helper

    for conv in convs:
        w_dq = producer[conv.input[1]]
        w = numpy_helper.to_array(inits[w_dq.input[0]])
        filters = np.concatenate([w, np.zeros((extra, *w.shape[1:]), w.dtype)])
        inits[w_dq.input[0]].CopyFrom(numpy_helper.from_array(filters, w_dq.input[0]))
        _widened_filters(w_dq, _bias(conv, producer, inits)[1], inits, extra)


def _zero_rows(convs: list, producer: dict, inits: dict, extra: int) -> None:
    """CONVS' int8 weights given EXTRA zero input rows (the channels added to what they read)."""
    from onnx import numpy_helper

    for conv in convs:
        name = producer[conv.input[1]].input[0]
        w = numpy_helper.to_array(inits[name])
        rows = np.zeros((w.shape[0], extra, *w.shape[2:]), w.dtype)
        inits[name].CopyFrom(numpy_helper.from_array(np.concatenate([w, rows], axis=1), name))


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


# ops that compute each value from the values at the same place alone (Clip, Div: where their other
# inputs are scalar constants); through them, and per-tensor QuantizeLinear / DequantizeLinear, added
# channels stay channels of their own, holding finite values that zero weights then cancel
ELEMENTWISE = ("Relu", "HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "Gelu")
ELEMENTWISE += ("Softsign", "Identity", "Clip", "Div", "QuantizeLinear", "DequantizeLinear")
BINARY = ("Add", "Mul", "Sub")  # of two such tensors of the same channels, or with a scalar constant
POOLS = ("ReduceMean", "ReduceMax")  # over the positions, the channels kept (_keeps_channels)


def _int8_filters(conv, producer: dict, inits: dict, readers: dict, bias: bool) -> bool:
    """Whether CONV is a plain (group 1) Conv with int8 weights dequantized per filter from
    initializers read by it alone (and, with BIAS, an int32 bias so too, or none)."""
    from onnx import helper, numpy_helper

    group = _group(conv)
    w_dq = producer.get(conv.input[1]) if len(conv.input) > 1 else None
    if group != 1 or w_dq is None or w_dq.op_type != "DequantizeLinear" or len(w_dq.input) < 3:
        return False
    axis = next((helper.get_attribute_value(a) for a in w_dq.attribute if a.name == "axis"), 1)
    constants = [*w_dq.input, w_dq.output[0]]
    if bias:
        int32, b_dq = _bias(conv, producer, inits)
        if not int32:
            return False
        constants += [*b_dq.input, b_dq.output[0]] if b_dq is not None else []
    if any(len(readers.get(x, ())) != 1 for x in constants) or any(x not in inits for x in w_dq.input):
        return False
    scale = numpy_helper.to_array(inits[w_dq.input[1]])
    return numpy_helper.to_array(inits[w_dq.input[0]]).dtype == np.int8 and (scale.ndim == 0 or axis == 0)


def _keeps_channels(node) -> bool:
    """Whether NODE pools over the positions only, one value per channel (a squeeze-and-excitation's
    GlobalAveragePool, or a ReduceMean over the spatial axes that keeps them)."""
    from onnx import helper

    if node.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        return True
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    axes = {a % 4 for a in attrs.get("axes") or ()}  # a 2-D convolution's [N, C, H, W]
    spatial = bool(axes) and axes <= {2, 3} and attrs.get("keepdims", 1) == 1
    return node.op_type in POOLS and len(node.input) == 1 and spatial


def _region(tensor: str, producer: dict, inits: dict, readers: dict, outputs: set, target=None):
    """(the plain Convs it ends in, its tensors, the plain Convs that write its other tensors) where
    everything computed from TENSOR is computed per channel (ELEMENTWISE, BINARY, pooled over the
    positions) and ends in plain Convs' first input (or in TARGET's); a binary op's other input may
    come from another plain Conv the same way, read by nothing else (a squeeze-and-excitation's gate).
    Channels added to TENSOR (and those Convs' outputs) then stay channels of their own up to the end
    Convs, whose zero weight rows cancel them. None otherwise (a graph output, a Concat, a reshape)."""
    region, ends, stack, pairs, reached = {tensor}, {}, [tensor], [], target is None
    while stack:
        name = stack.pop()
        if name in outputs or not readers.get(name):
            return None
        for node in readers[name]:
            first = node.input[0] == name and list(node.input).count(name) == 1
            if node is target and first:
                reached = True
            elif node.op_type == "Conv" and first:
                if not _int8_filters(node, producer, inits, readers, bias=False):
                    return None
                ends[id(node)] = node
            elif node.op_type in BINARY or (first and (node.op_type in ELEMENTWISE or _keeps_channels(node))):
                if node.op_type in BINARY:
                    pairs.append(node)
                elif not all(graph_index.scalar(x, inits, producer) is not None for x in node.input[1:] if x):
                    return None
                if node.output[0] not in region:
                    region.add(node.output[0])
                    stack.append(node.output[0])
            else:
                return None
    # a binary op's other input: in the region, a scalar, or written by a Conv for it alone (known only now)
    sources = {}
    for node in pairs:
        for x in node.input:
            if x in region or graph_index.scalar(x, inits, producer) is not None:
                continue
            found = _chain(x, producer, inits, readers, outputs)
            if found is None:
                return None
            sources[id(found[0])] = found[0]
            region.update(found[1])
    return (list(ends.values()), region, list(sources.values())) if reached else None


def _chain(tensor: str, producer: dict, inits: dict, readers: dict, outputs: set):
    """(a plain Conv, the tensors from it to TENSOR) where TENSOR is that Conv's output through
    ELEMENTWISE ops and BINARY ones with a scalar constant (a HardSigmoid written as an Add of 3,
    edgekit.compress.qlinear_forms), each tensor read once; None otherwise."""
    chain = []
    for _ in range(16):
        if tensor in outputs or len(readers.get(tensor, ())) != 1 or tensor not in producer:
            return None
        chain.append(tensor)
        node = producer[tensor]
        if node.op_type == "Conv":
            return (node, chain) if _int8_filters(node, producer, inits, readers, bias=True) else None
        constants = all(graph_index.scalar(x, inits, producer) is not None for x in node.input[1:] if x)
        if node.op_type not in (*ELEMENTWISE, *BINARY) or not constants:
            return None
        tensor = node.input[0]
    return None


def _source(tensor: str, producer: dict, inits: dict, readers: dict, outputs: set, target):
    """(the plain Convs it ends in, its tensors, the plain Convs that write them) where TENSOR, read by
    TARGET, is computed per channel from the nearest plain Conv up its first inputs, and all else
    computed from that Conv's output is a _region ending in TARGET and plain Convs: zero filters
    there widen TENSOR. None otherwise."""
    for _ in range(16):  # up the first inputs to the nearest Conv
        node = producer.get(tensor)
        if node is None or (node.op_type not in ELEMENTWISE + BINARY and node.op_type != "Conv"):
            return None
        if node.op_type == "Conv":
            if not _int8_filters(node, producer, inits, readers, bias=True):
                return None
            found = _region(node.output[0], producer, inits, readers, outputs, target)
            return None if found is None else (found[0], found[1], [node, *found[2]])
        tensor = node.input[0]
    return None
