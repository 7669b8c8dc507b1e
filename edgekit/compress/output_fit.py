"""The output layer refitted to the INT8 model's own features (AdaQuant, Hubara et al. 2021, "Accurate
Post Training Quantization With Small Calibration Sets", for the last layer, in closed form): a fully
connected layer (Gemm) that writes a graph output, directly or through a Softmax or a Sigmoid (a
multi-label or wake-word head), gets the weights and bias that map the features the INT8 model
computes on the calibration samples closest to fp32's outputs (least squares, held near fp32's
weights by a ridge), requantized in the form it had.

Every error before the classifier reaches it as a changed feature vector; weight rounding (AdaRound)
and bias correction fit the layer to fp32's features, and a mean correction of the logits moves only
their average. On 2000 held-out photo crops (160 calibration crops, Zen 4 VNNI, bench/
int8_error_sources.py) the refit took top-1 agreement with fp32 from 93.8 to 95.7 % on
EfficientNet-Lite1 (KL divergence 0.0057 -> 0.0030), 92.3 to 94.2 % on Lite2 (0.0103 -> 0.0034) and
94.0 to 94.1 % on MobileNetV2 (0.0101 -> 0.0073); the logits' mean alone gave 94.0 and 94.4 % on
Lite1 and MobileNetV2 (docs/guide/quantize.md).
ORT's quantizer, NNCF and AIMET have no such step (AIMET's AdaRound keeps the fp32 weights' values
up to rounding). The ridge's strength is chosen on the last calibration samples, held out of the
fit; where none lowers their error by a tenth (GAIN), the layer is left as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.compress import model_file
from edgekit.compress.bias_correction import weight_levels
from edgekit.compress.range_search import judged_kinds, output_error
from edgekit.data import Samples

# ridge strengths tried, as multiples of the features' mean squared norm per dimension (the mean of
# the diagonal of X^T X): Lite1's and MobileNetV2's held-out samples chose 1 (0.1-3 within 10 %)
RIDGE = (0.1, 0.3, 1.0, 3.0, 10.0)
# a refit is kept only where it lowers the held-out error by at least this share: a 2 % fall on 53
# held-out samples was noise (a small CNN's error on 256 other images rose 7 %); the zoo CNNs' 35-50 %
GAIN = 0.1
VALIDATE = 64  # the last calibration samples, held out of the fit (a third where there are fewer)
FEWEST = 24  # calibration samples below which nothing is fitted
MOST = 512  # calibration samples the fit reads at most
MAX_K = 4096  # features (inputs of the layer) above which it keeps its weights: X^T X is K x K
# an op between the layer and the output that the fit sees through: a Softmax over the classes, or each
# class's own Sigmoid (a multi-label or wake-word head); Identity nodes (paddle2onnx's) are passed
LINKS = ("Softmax", "LogSoftmax", "Sigmoid")
# a Cast between float types is passed too: a float16 model's logits cast back to float32, or its float16
# output after the quantizer's float32 copy of it
FLOATS = (1, 10, 11, 16)  # TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16
# ops that only regroup a sample's values, passed where the output keeps one row per sample of the
# layer's width (checked on the outputs): paddle2onnx's Flatten and Reshape around its Softmax
REGROUP = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")
# a Sigmoid's probabilities are fitted as logits, clipped where fp32 saturates: past logit(1 - EDGE)
# an INT8 logit that is further out in the same direction is already right
EDGE = 1e-4


@dataclass
class Head:
    """A Gemm (NODE: its inputs are the features, the weight, the bias) computing logits that are
    graph output OUTPUT or its LINK (a Softmax, LogSoftmax or Sigmoid; None: none); its weight's and
    bias's DequantizeLinear nodes (BIAS None: a float bias initializer)."""

    node: object
    output: str
    link: str | None
    weight: object
    bias: object


def heads(model) -> list[Head]:
    """MODEL's (a QDQ ModelProto) Gemms with constant INT8 weights and a bias that write a graph
    output (nothing after them but Identity nodes, float Casts, REGROUP ops, and a Softmax over their
    classes or a Sigmoid), whose weight and bias no other node reads. A MatMul and the Add of its
    bias (tf2onnx's Dense) reach the quantizer as a Gemm: ORT's pre-processing fuses them."""
    from onnx import TensorProto, helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}  # the nodes that read a tensor's values (a Shape reads none of them:
    for n in g.node:  # paddle2onnx's Reshape after the head takes its shape from the head's output)
        for t in n.input if n.op_type != "Shape" else ():
            readers[t] = readers.get(t, 0) + 1
    inputs = {i.name for i in g.input}
    found = []
    for out in g.output:
        node, link = _passed(producer.get(out.name), producer, readers), None
        if node is not None and node.op_type in LINKS:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attrs.get("axis", -1) not in (-1, 1) or readers.get(node.input[0], 0) != 1:
                continue
            node, link = _passed(producer.get(node.input[0]), producer, readers), node.op_type
        if node is None:
            continue
        if node.op_type != "Gemm" or len(node.input) < 3 or node.input[0] in inputs:
            continue  # (a graph input: no earlier layer's error to make up for)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        weight = producer.get(node.input[1])
        if weight is None or weight.op_type != "DequantizeLinear" or weight.input[0] not in inits:
            continue
        if len(inits[weight.input[0]].dims) != 2 or readers.get(weight.output[0]) != 1:
            continue
        if readers.get(weight.input[0]) != 1 or readers.get(weight.input[1]) != 1:
            continue
        bias = producer.get(node.input[2])
        if bias is None and node.input[2] in inits:
            pass  # a float bias
        elif bias is not None and bias.op_type == "DequantizeLinear" and bias.input[0] in inits:
            if inits[bias.input[0]].data_type != TensorProto.INT32 or readers.get(bias.input[1]) != 1:
                continue
        else:
            continue
        if readers.get(node.input[2]) != 1:
            continue
        found.append(Head(node, out.name, link, weight, bias))
    return found


def _passed(node, producer: dict, readers: dict):
    """NODE, or the first node before it that is not an Identity, a Cast between float types or an op
    that regroups values (REGROUP), read by it alone."""
    from onnx import helper

    while node is not None and readers.get(node.input[0], 0) == 1:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        cast = node.op_type == "Cast" and attrs.get("to") in FLOATS
        if not (node.op_type in ("Identity", *REGROUP) or cast):
            break
        node = producer.get(node.input[0])
    return node


def _outputs(
    model, samples: Samples, fixed: int | None, names: list[str], fused: bool = True
) -> dict[str, np.ndarray]:
    """MODEL's (a ModelProto) tensors NAMES (graph outputs or not) on SAMPLES in ONNX Runtime, all
    graph optimizations on: the fused INT8 kernels the model deploys to (edgekit.compress.tensors
    runs them off, the Q/DQ computed literally); not FUSED, off (target_cpu.fused_here)."""
    import onnxruntime as ort
    from onnx import helper

    m = type(model)()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in names if t not in have)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not fused:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    joined = batching.outputs(lambda feeds: session.run(names, feeds), samples.inputs, fixed, 16)
    return {n: v.astype(np.float64).reshape(v.shape[0], -1) for n, v in zip(names, joined, strict=True)}


def _linked(z: np.ndarray, link: str | None) -> np.ndarray:
    """The output LINK makes of logits Z."""
    if link is None:
        return z
    if link == "Sigmoid":
        return 0.5 * (1 + np.tanh(0.5 * z))  # 1 / (1 + exp(-z)), without overflow
    log = z - z.max(1, keepdims=True)
    log = log - np.log(np.exp(log).sum(1, keepdims=True))
    return log if link == "LogSoftmax" else np.exp(log)


def _targets(ref: np.ndarray, z: np.ndarray, link: str | None) -> np.ndarray:
    """The logits the layer should give for fp32's output REF, where Z are its INT8 logits: REF
    itself, the log-probabilities (a Softmax ignores each row's constant: Z's row means kept), or a
    Sigmoid's logits (where fp32's probability is within EDGE of 0 or 1, Z where it is further out)."""
    if link is None:
        return ref
    if link == "Sigmoid":
        edge = np.log((1 - EDGE) / EDGE)
        t = np.log(np.clip(ref, EDGE, 1 - EDGE) / np.clip(1 - ref, EDGE, 1 - EDGE))
        return np.where(np.abs(t) >= edge, np.where(z * np.sign(t) > edge, z, t), t)
    log = ref if link == "LogSoftmax" else np.log(np.maximum(ref, 1e-30))
    return log - log.mean(1, keepdims=True) + z.mean(1, keepdims=True)


@dataclass
class Layer:
    """What the fit reads and writes of one head: the current weight's levels, scale and zero point
    (in its layout: (C, K) with transB, else (K, C)), the features' scale where the bias is INT32."""

    levels: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    trans_b: bool
    input_scale: np.ndarray | None  # per output channel, shaped as the weight's scale
    low: int  # the levels' integer type's range
    high: int


def _layer(head: Head, inits: dict) -> Layer:
    from onnx import helper, numpy_helper

    levels, scale, zero = weight_levels(head.weight, inits)
    kind = np.iinfo(numpy_helper.to_array(inits[head.weight.input[0]]).dtype)
    trans_b = any(a.name == "transB" and helper.get_attribute_value(a) for a in head.node.attribute)
    input_scale = None
    if head.bias is not None:
        bias_scale = numpy_helper.to_array(inits[head.bias.input[1]]).astype(np.float64)
        input_scale = bias_scale / _channels(scale)  # a bias's scale is the input's times the weight's
    return Layer(levels, scale, zero, trans_b, input_scale, kind.min, kind.max)


def _quantized(w: np.ndarray, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """Weights W (the layer's layout) as levels in the layer's form, with their new scales: its zero
    points, and per scale as many levels either side of them as it used (7-bit weights stay 7-bit),
    within its integer type."""
    axes = tuple(i for i in range(w.ndim) if np.ndim(layer.scale) == 0 or layer.scale.shape[i] == 1)
    zero = layer.zero
    bound = np.maximum(np.abs(layer.levels - zero).max(axis=axes, keepdims=True), 1.0)
    low, high = np.maximum(zero - bound, layer.low), np.minimum(zero + bound, layer.high)
    up = np.where(high > zero, np.maximum(w.max(axis=axes, keepdims=True), 0) / np.maximum(high - zero, 1), 0)
    down = np.where(
        low < zero, np.maximum(-w.min(axis=axes, keepdims=True), 0) / np.maximum(zero - low, 1), 0
    )
    scale = np.maximum(np.maximum(up, down), 1e-30)
    if np.ndim(layer.scale) == 0:
        scale = scale.reshape(())
    return np.clip(np.rint(w / scale) + zero, low, high), scale


def _dense(levels: np.ndarray, scale: np.ndarray, layer: Layer) -> np.ndarray:
    """The (K, C) matrix the levels stand for."""
    w = (levels - layer.zero) * scale
    return w.T if layer.trans_b else w


def _channels(scale: np.ndarray) -> np.ndarray:
    """A weight's scale per output channel (a vector), or its one scale."""
    return scale.reshape(-1) if scale.size > 1 else scale.reshape(())


def _bias_levels(b: np.ndarray, scale: np.ndarray, layer: Layer) -> tuple[np.ndarray, np.ndarray]:
    """Bias B as the layer's INT32 levels at the weight scales SCALE, and their step."""
    step = layer.input_scale * _channels(scale)
    return np.clip(np.rint(b / step), -(2**31), 2**31 - 1), step


def _biased(b: np.ndarray, scale: np.ndarray, layer: Layer) -> np.ndarray:
    """Bias B as the layer computes it: rounded to its INT32 levels where it has them."""
    if layer.input_scale is None:
        return b
    levels, step = _bias_levels(b, scale, layer)
    return levels * step


def _solve(x: np.ndarray, t: np.ndarray, w0: np.ndarray, ridge: float) -> np.ndarray:
    """argmin ||X W - T||^2 + RIDGE * mean(diag X^T X) * ||W - W0||^2 (X with a column of ones)."""
    gram = x.T @ x
    lam = ridge * float(np.mean(np.diag(gram)))
    return np.linalg.solve(gram + lam * np.eye(len(gram)), x.T @ t + lam * w0)


def _fp32(src_inits: dict, levels: str, now: np.ndarray, layer: Layer) -> np.ndarray:
    """The fp32 weight (K, C) the levels initializer LEVELS was quantized from (ORT names it
    NAME_quantized), where the source model's SRC_INITS have it; else NOW, the weight the levels stand for."""
    from onnx import numpy_helper

    init = src_inits.get(levels.removesuffix("_quantized"))
    w = None if init is None else numpy_helper.to_array(init).astype(np.float64)
    if w is None or w.shape != layer.levels.shape:
        return now
    return w.T if layer.trans_b else w


def _bias(head: Head, inits: dict) -> np.ndarray:
    """The bias HEAD adds, as a vector of floats."""
    from onnx import numpy_helper

    if head.bias is None:
        return numpy_helper.to_array(inits[head.node.input[2]]).astype(np.float64).reshape(-1)
    levels, scale, zero = weight_levels(head.bias, inits)
    return (levels - zero) * scale


def _fit_head(
    h: Head,
    layer: Layer,
    x: np.ndarray,
    z: np.ndarray,
    ref: np.ndarray,
    w0: np.ndarray,
    held: int,
    kind: list[str],
):
    """HEAD's refit (weight in its layout, bias; None: not kept) from its features X (a column of
    ones last), INT8 logits Z and fp32's outputs REF, its ridge chosen on the last HELD rows by the
    error of output KIND, with its record."""
    t = _targets(ref, z, h.link)

    def refit(rows: slice, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """The weight (its layout) and bias fitted on ROWS; the bias refitted to the weight's levels
        (their rounding shifts each output's mean: a bias correction)."""
        wb = _solve(x[rows], t[rows], w0, ridge)
        weight = wb[:-1].T if layer.trans_b else wb[:-1]
        dense = _dense(*_quantized(weight, layer), layer)
        return weight, (t[rows] - x[rows, :-1] @ dense).mean(0)

    def error(weight: np.ndarray, bias: np.ndarray, rows: slice) -> float:
        levels, scale = _quantized(weight, layer)
        logits = x[rows, :-1] @ _dense(levels, scale, layer) + _biased(bias, scale, layer)
        return output_error([_linked(logits, h.link)], [ref[rows]], kind)

    n = len(x)
    fitted, rest = slice(0, n - held), slice(n - held, n)
    before = output_error([_linked(z[rest], h.link)], [ref[rest]], kind)
    errors = {r: error(*refit(fitted, r), rest) for r in RIDGE}
    best = min(errors, key=errors.get)
    entry = {"output": h.output, "held_out_error": [round(before, 6), round(errors[best], 6)]}
    if errors[best] >= before * (1 - GAIN):
        return None, entry
    return refit(slice(0, n), best), {**entry, "ridge": best}


def fit(
    int8: Path,
    fp32: Path,
    source: Path,
    calib: Samples,
    fixed: int | None,
    declared: dict | None = None,
    fused: bool = True,
) -> tuple[dict, dict]:
    """The refitted float weight (in its layout) and bias of each head of INT8 (a QDQ file quantized
    from SOURCE) that its held-out calibration samples chose, by the head's weight initializer, and
    the record (empty where INT8 has no head or too few samples). FUSED: INT8 run on ORT's fused
    kernels, else its Q/DQ as written (target_cpu.fused_here)."""
    import onnx

    model = onnx.load(str(int8))
    found = heads(model)
    n = min(len(calib), MOST)
    if not found or n < FEWEST:
        return {}, {}
    inits = {i.name: i for i in model.graph.initializer}
    src_inits = {i.name: i for i in onnx.load(str(source)).graph.initializer}
    samples = calib.take(slice(0, n))
    ref = _outputs(onnx.load(str(fp32)), samples, fixed, [h.output for h in found])
    got = _outputs(
        model, samples, fixed, [t for h in found for t in (h.node.input[0], h.node.output[0])], fused
    )
    held = min(VALIDATE, n // 3)
    fits, record = {}, {"layers": [], "samples": n - held, "held_out_samples": held}
    for h in found:
        layer = _layer(h, inits)
        x = got[h.node.input[0]]
        if x.shape[1] > MAX_K:
            continue
        w_now = _dense(layer.levels, layer.scale, layer)
        x = np.concatenate([x, np.ones((len(x), 1))], 1)
        w0 = np.concatenate([_fp32(src_inits, h.weight.input[0], w_now, layer), _bias(h, inits)[None]], 0)
        if ref[h.output].shape != got[h.node.output[0]].shape:  # a regrouping that moved the rows
            continue
        kind = judged_kinds([ref[h.output]], [h.output], declared)
        found_fit, entry = _fit_head(h, layer, x, got[h.node.output[0]], ref[h.output], w0, held, kind)
        if found_fit is not None:
            fits[h.weight.input[0]] = found_fit
        record["layers"].append(entry)
    return fits, record


def apply(path: Path, fits: dict) -> int:
    """Write FITS (from `fit`) into the heads of PATH (a QDQ file, rewritten):
    each weight requantized in its layer's form, its bias at the new scale; how many it wrote."""
    import onnx
    from onnx import numpy_helper

    if not fits:
        return 0
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    done = 0
    for h in heads(model):
        if h.weight.input[0] not in fits:
            continue
        w, b = fits[h.weight.input[0]]
        layer = _layer(h, inits)
        levels, scale = _quantized(w, layer)
        q_init, s_init = inits[h.weight.input[0]], inits[h.weight.input[1]]
        q_type = numpy_helper.to_array(q_init).dtype
        s_type = numpy_helper.to_array(s_init).dtype
        q_init.CopyFrom(numpy_helper.from_array(levels.astype(q_type), q_init.name))
        s_init.CopyFrom(
            numpy_helper.from_array(scale.reshape(tuple(s_init.dims)).astype(s_type), s_init.name)
        )
        if h.bias is None:
            b_init = inits[h.node.input[2]]
            value = np.reshape(b, tuple(b_init.dims)).astype(numpy_helper.to_array(b_init).dtype)
            b_init.CopyFrom(numpy_helper.from_array(value, b_init.name))
        else:
            bias_levels, step = _bias_levels(b, scale, layer)
            qb, sb = inits[h.bias.input[0]], inits[h.bias.input[1]]
            qb.CopyFrom(numpy_helper.from_array(bias_levels.astype(np.int32), qb.name))
            sb.CopyFrom(numpy_helper.from_array(np.reshape(step, tuple(sb.dims)).astype(np.float32), sb.name))
        done += 1
    model_file.save(model, path)
    return done
