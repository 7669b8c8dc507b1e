"""Where a compressed model's error grows: a quick per-layer probe, run when a fidelity floor is missed.

Both ONNX models run on a few samples with every intermediate tensor they share made a graph
output: the Q/DQ and fp16 passes keep the float tensors' names. A tensor that is quantized is read
where its consumers read it, after its QuantizeLinear/DequantizeLinear pair (which also applies a
Relu the quantizer folded into the range, and a constant factor folded into the DequantizeLinear's
scale: paddle2onnx's Hardswish / 6, edgekit.compress.qlinear_forms). Each tensor's noise is
measured per channel against fp32 and summarised by the median channel, so two outlier channels
cannot hide thirty crushed ones (nor one dead channel blame a layer). A node is blamed for the
noise it adds over the noisiest tensor it reads, not for what it inherited. One run of each model:
seconds, where `edgekit sensitivity` quantizes every layer on its own.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.compress import model_file
from edgekit.compress.qlinear_forms import levels
from edgekit.data import Samples

SAMPLES = 4  # enough to rank layers; every intermediate tensor of each sample is held at once
CAP_DB = 100.0  # identical tensors (SQNR inf) count as this
# a channel this far below the tensor's strongest in power (100 dB: below a level even of a 16-bit
# quantizer over the tensor) is off: pruned by a BatchNorm whose scale is ~1e-8 (half of a PicoDet's
# channels; counted, they made the median channel of such layers 0 dB). A channel crushed by
# outliers 1000x its size (60 dB) still counts.
OFF = 1e-10
Load = Callable[[str], object]  # a model file -> a session with run(feeds) -> list of arrays


def probe(fp32: Path, model: Path, samples: Samples, fixed: int | None, load: Load | None = None) -> dict:
    """Each shared node output's SQNR (median channel, dB), in graph order, and the three nodes that
    add the most noise (`worst`); LOAD opens the compressed model (default: ONNX Runtime, CPU)."""
    import onnx

    from edgekit.runtimes import ort

    load = load or (lambda path: ort.load(path))
    ref_graph = onnx.load(str(fp32), load_external_data=False).graph
    graph = onnx.load(str(model), load_external_data=False).graph
    shared = {o for n in ref_graph.node for o in n.output} & {o for n in graph.node for o in n.output}
    names = [o for n in graph.node for o in n.output if o in shared]
    read = _as_read(graph)
    take = samples.take(slice(0, min(SAMPLES, len(samples))))
    with tempfile.TemporaryDirectory(prefix="edgekit-probe-") as tmp:
        ref = _run(ort.load, _with_outputs(fp32, names, Path(tmp) / "fp32.onnx"), take, fixed)
        seen = [read.get(n, n) for n in names]
        new = _run(load, _with_outputs(model, seen, Path(tmp) / "model.onnx"), take, fixed)
    factor = _folded_factors(graph)
    sqnr = {}
    for name in names:
        r, o = ref.get(name), new.get(read.get(name, name))
        if r is not None and o is not None and [a.shape for a in r] == [a.shape for a in o]:
            # a pair whose scales differ reads the tensor as its QuantizeLinear saw it times their
            # ratio (a folded Div), or the fp32 tensor where the graph fed the pair that over the
            # ratio instead (a HardSigmoid written as an Add): the reading that fits is the one meant
            scaled = [[a * k for a in r] for k in (1.0, factor[name])] if name in factor else [r]
            sqnr[name] = max(channel_sqnr(x, o) for x in scaled)  # else not computed in both, or pruned
    upstream = _upstream(graph, sqnr)
    layers = []
    for n in graph.node:
        outs = [sqnr[o] for o in n.output if o in sqnr]
        if not outs or n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        s_in, s_out = min((upstream(i) for i in n.input if i), default=CAP_DB), min(outs)
        added = 10 ** (-s_out / 10) - 10 ** (-s_in / 10)
        node = n.name or n.output[0]
        layers.append({"node": node, "op": n.op_type, "sqnr_in_db": s_in, "sqnr_db": s_out, "added": added})
    worst = sorted((x for x in layers if x["added"] > 0), key=lambda x: -x["added"])
    return {"samples": len(take), "layers": layers, "worst": [x["node"] for x in worst[:3]]}


def channel_sqnr(ref: list[np.ndarray], out: list[np.ndarray]) -> float:
    """SQNR (dB) of the median channel (axis 1 of a 4-D or larger tensor, else the last axis),
    over the batches REF and OUT; channels that are off in fp32 (OFF) are left out."""
    signal = noise = 0.0
    for r, o in zip(ref, out, strict=True):
        axis = 1 if r.ndim >= 4 else r.ndim - 1
        other = tuple(i for i in range(r.ndim) if i != axis)
        signal = signal + np.sum(r * r, axis=other)
        noise = noise + np.sum((r - o) ** 2, axis=other)
    signal, noise = np.atleast_1d(signal), np.atleast_1d(noise)
    live = signal > OFF * signal.max()
    if not live.any():
        return CAP_DB
    ratio = float(np.median(noise[live] / signal[live]))
    return CAP_DB if ratio <= 0 else float(min(CAP_DB, -10 * np.log10(ratio)))


def _as_read(graph) -> dict[str, str]:
    """{tensor: the DequantizeLinear output its consumers read} for each tensor quantized in GRAPH."""
    dq = {n.input[0]: n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    return {
        n.input[0]: dq[n.output[0]] for n in graph.node if n.op_type == "QuantizeLinear" and n.output[0] in dq
    }


def _folded_factors(graph) -> dict[str, float]:
    """{tensor: the factor its DequantizeLinear's scale carries over its QuantizeLinear's} for each
    quantized tensor whose pair has two per-tensor constant scales that differ (a folded Div or Mul)."""
    inits = {i.name: i for i in graph.initializer}
    read = {n.input[0]: levels(n, inits) for n in graph.node if n.op_type == "DequantizeLinear"}
    factors = {}
    for n in graph.node:
        if n.op_type == "QuantizeLinear" and n.input[0] not in inits:
            q, dq = levels(n, inits), read.get(n.output[0])
            if q and dq and abs(dq[0] / q[0] - 1) > 1e-6:
                factors[n.input[0]] = dq[0] / q[0]
    return factors


def _upstream(graph, sqnr: dict[str, float]) -> Callable[[str], float]:
    """A tensor's SQNR, or where it was not compared (a Q/DQ output, a fused node's), the lowest of
    the compared tensors it is computed from; weights and graph inputs are exact."""
    producer = {o: n for n in graph.node for o in n.output}
    memo: dict[str, float] = {}

    def at(name: str) -> float:
        if name in sqnr:
            return sqnr[name]
        if name not in memo:
            memo[name] = CAP_DB  # a cycle cannot occur in ONNX, but a guard costs nothing
            node = producer.get(name)
            memo[name] = min((at(i) for i in node.input if i), default=CAP_DB) if node else CAP_DB
        return memo[name]

    return at


def _with_outputs(path: Path, names: list[str], out: Path) -> str:
    """A copy of the model at PATH with NAMES among its graph outputs (ONNX Runtime infers types)."""
    import onnx

    model = onnx.load(str(path))
    have = {o.name for o in model.graph.output}
    # a DequantizeLinear's output is read for its own name and for the tensor it quantizes: once
    model.graph.output.extend(onnx.ValueInfoProto(name=n) for n in dict.fromkeys(names) if n not in have)
    model_file.save(model, out)
    return str(out)


def _run(load: Load, path: str, samples: Samples, fixed: int | None) -> dict[str, list[np.ndarray]]:
    """{output: its values per batch} of the model at PATH over SAMPLES, one sample (or fixed
    batch) at a time."""
    sess = load(path)
    arrays: dict[str, list[np.ndarray]] = {}
    for feeds, _ in batching.batches(samples.inputs, fixed, 1):
        for name, value in zip(sess.output_names, sess.run(feeds), strict=True):
            arrays.setdefault(name, []).append(np.asarray(value, np.float64))
    return arrays
