"""Loss-aware activation ranges, after LAPQ (Nahshan et al. 2021, "Loss aware post-training
quantization"): each activation's calibrated range is scaled, tensor by tensor in graph order, by
the factor that brings the INT8 model's outputs closest to fp32's on calibration samples (KL
divergence of class scores, squared error of anything else), measured in ONNX Runtime's fused INT8
kernels, the ones the model deploys to.

A percentile puts every tensor's threshold at the same share of its values, but what a tensor's
tail is worth to the outputs differs: MobileNetV2's last blocks carry outliers that its output
does not need: their ranges at 0.15-0.3x gained it 2 points of top-1 agreement; the
EfficientNet-Lites' KL divergence from fp32 fell 11-17 % (docs/guide/quantize.md). On by default,
within a time budget: where its cost projected from the first evaluation exceeds the budget, only
the last activations that fit it are searched (none: skipped), it stops where the budget runs out,
keeping the factors found, and its record says so; where the model's work (its multiply-accumulates,
counted, not timed: the same factors on any machine under any load) is small, it chooses the
factors on more samples (fewer overfit them). It sweeps the activations up to three times,
each sweep from the ranges the last left, while the last scaled any (coordinate descent, as LAPQ's
search iterates). A trial runs only the part of the model its factor changes (the suffix from the
layer that writes the tensor), fed with the quantized tensors the rest of the model computed once
per adopted factor: the same fused kernels, at a fraction of the cost.
ORT's quantizer and NNCF's range estimators calibrate each tensor on its own values, so edgekit
adds the search. A range scaled by f keeps its zero point and multiplies its scale by f; the int32
biases of the layers that read the tensor (their scale is input scale x weight scale) are
requantized with it. A range that stands for a ReLU6 the quantizer folded into its saturation is
never widened past the clip (that would drop the clip).
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.benchmarks.metrics import (
    independent_scores,
    log_probabilities,
    output_kind,
    probability_rows,
    vectors,
)
from edgekit.compress import input_lattice, macs, model_file, output_tail
from edgekit.data import Samples
from edgekit.progress import progress

# factors tried on every range (the error need not fall steadily between them: a greedy walk down
# from 1 lost MobileNetV2's gain that this grid found), then the best one's neighbours
COARSE = (0.75, 0.5, 0.3, 0.15, 1.3)
REFINE = 1.25
GAIN = 0.001  # a factor is taken only where it lowers the output error by at least this share
SAMPLES = 32  # calibration samples the factors are chosen on
# where the whole search (SWEEPS sweeps) computes under GROW multiply-accumulates on SAMPLES, it
# chooses on more, up to MOST: on 32 crops MobileNetV2's factors overfit them (KL divergence on 2000
# held-out crops 0.0197; on 64 0.0133, on 96 0.0113, AMX Xeon; 0.0131 / 0.0101 / 0.0113, Zen 4, with
# the input levels); the EfficientNet-Lites' searches compute 2.5-4x MobileNetV2's and keep 32. A
# multiple of SAMPLES, the one nearest what fits GROW. Counted, not timed: a timing put MobileNetV2 on
# 32 or 64 samples by the load of the machine (93.0 or 94.0 % agreement, one Zen 4, one command)
MOST = 96
GROW = 1.5e13  # about 100 s of trials on two Zen 4 cores; MobileNetV2's 6.8e12 on 32: 64, Lite1's 1.7e13
BUDGETED = 120.0  # seconds: a --range-search-budget under it grows the samples by its share of GROW
# fewest samples they are chosen on where SAMPLES would not fit the budget: a detector's page holds
# a hundred classifier crops' values (PP-OCRv5's detector, 736x736 pages: 1470 s projected on 32)
FEWEST = 8
# the calibration samples after them, on which a chosen factor must lower the error too (searched
# on 64 alone, the factors overfit them: EfficientNet-Lite2 lost 3 points of agreement)
VALIDATE = 64
TRIALS = len(COARSE) + 1  # evaluations an activation takes on average (MobileNetV2: 65 in 39 s)
# an output error below this (KL divergence, or squared error over fp32's variance: 40 dB) leaves
# nothing for the search to find; the zoo CNNs start at 0.004-0.04
NEGLIGIBLE = 1e-4
CACHE_BYTES = 256 * 2**20  # the tensors kept for the suffixes of the activations to come
REFILLS = 0.5  # whole-model runs per activation that refresh them (after each adopted factor)
# sweeps over all the activations at most, each from the ranges the last one left (coordinate
# descent: a range scaled late changes what an earlier one's best factor is); on 2000 held-out crops
# (VNNI EPYC, one run each) the KL divergence from fp32 fell 16 % on MobileNetV2 (3 sweeps), 2 % on
# EfficientNet-Lite1 (3); Lite2's second sweep found nothing (docs/guide/quantize.md)
SWEEPS = 3


@dataclass
class Activation:
    """One activation quantizer: its scale initializer, the largest factor its range may take, and
    the int32 biases of the layers reading it, as (bias, bias scale, weight scale) initializers."""

    scale: str
    ceiling: float = math.inf
    biases: list[tuple[str, str, str]] = field(default_factory=list)


def activations(model, fp32) -> list[Activation]:
    """MODEL's (a QDQ ModelProto) activation quantizers in graph order, one per scale initializer;
    FP32 (the model it was quantized from) tells which ranges stand for a folded Clip."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    readers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    clips = _clip_bounds(fp32)
    found: dict[str, Activation] = {}
    for q in model.graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] in inits or len(q.input) < 3:
            continue
        if q.input[1] not in inits or q.input[2] not in inits:
            continue
        if q.input[0].endswith(input_lattice.SUFFIX):  # a picture's levels, quantized exactly
            continue
        act = found.setdefault(q.input[1], Activation(q.input[1]))
        made_by = producer.get(q.input[0])
        if q.input[0] in clips and (made_by is None or made_by.op_type not in ("Clip", "Relu")):
            scale = float(numpy_helper.to_array(inits[q.input[1]]).reshape(-1)[0])
            zp_init = inits[q.input[2]]
            zero = int(numpy_helper.to_array(zp_init).reshape(-1)[0])
            top = np.iinfo(numpy_helper.to_array(zp_init).dtype).max
            act.ceiling = min(act.ceiling, clips[q.input[0]] / max((top - zero) * scale, 1e-30))
        for dq in readers.get(q.output[0], []):
            if dq.op_type != "DequantizeLinear":
                continue
            for layer in readers.get(dq.output[0], []):
                reads = layer.input[0] == dq.output[0] and len(layer.input) > 2
                if layer.op_type not in ("Conv", "Gemm") or not reads:
                    continue
                bias, weight = producer.get(layer.input[2]), producer.get(layer.input[1])
                if bias is None or weight is None or {bias.op_type, weight.op_type} != {"DequantizeLinear"}:
                    continue
                int32 = bias.input[0] in inits and inits[bias.input[0]].data_type == onnx.TensorProto.INT32
                if int32 and bias.input[1] in inits and weight.input[1] in inits:
                    act.biases.append((bias.input[0], bias.input[1], weight.input[1]))
    return list(found.values())


def _clip_bounds(fp32) -> dict[str, float]:
    """The upper bound of each Clip output of FP32 (a ModelProto) that has one."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in fp32.graph.initializer}
    bounds = {}
    for n in fp32.graph.node:
        if n.op_type != "Clip":
            continue
        if len(n.input) > 2 and n.input[2] in inits:
            bounds[n.output[0]] = float(numpy_helper.to_array(inits[n.input[2]]))
        for a in n.attribute:
            if a.name == "max":
                bounds[n.output[0]] = float(helper.get_attribute_value(a))
    return bounds


class _Scaler:
    """MODEL with its activation ranges scaled: keeps each touched initializer's original values."""

    def __init__(self, model, acts: list[Activation]):
        from onnx import numpy_helper

        self.model = model
        self.inits = {i.name: i for i in model.graph.initializer}
        names = {a.scale for a in acts} | {x for a in acts for b in a.biases for x in b}
        self.orig = {n: numpy_helper.to_array(self.inits[n]).copy() for n in names}

    def set(self, act: Activation, factor: float) -> None:
        from onnx import numpy_helper

        scale = (self.orig[act.scale] * np.float32(factor)).astype(np.float32)
        self.inits[act.scale].CopyFrom(numpy_helper.from_array(scale, act.scale))
        for bias, bias_scale, weight_scale in act.biases:
            value = self.orig[bias].astype(np.float64) * self.orig[bias_scale].astype(np.float64)
            new_scale = (scale * self.orig[weight_scale]).astype(np.float32)
            level = np.clip(np.round(value / np.maximum(new_scale, 1e-30)), -(2**31), 2**31 - 1)
            self.inits[bias_scale].CopyFrom(numpy_helper.from_array(new_scale, bias_scale))
            self.inits[bias].CopyFrom(numpy_helper.from_array(level.astype(np.int32), bias))


@dataclass
class Suffix:
    """The part of a model one activation's factor changes, as a model of its own: NODES (indices
    in graph order), the tensors CUT it reads from the rest of the graph, and the graph OUTPUTS it
    computes (the others do not depend on the factor)."""

    nodes: list[int]
    cut: list[str]
    outputs: list[str]


def suffixes(model, acts: list[Activation]) -> list[Suffix | None]:
    """Per activation of ACTS, the nodes of MODEL that read its initializers and all downstream of
    them, grown upstream until every tensor they read from outside is quantized (a
    QuantizeLinear's output) or a graph input, so the layer writing the tensor stays fused with its
    QuantizeLinear as in the whole model; None where it computes no graph output, and for every
    activation of a graph with subgraphs (their outer-scope reads are not node inputs)."""
    nodes = list(model.graph.node)
    if any(a.type in (5, 10) for n in nodes for a in n.attribute):  # GRAPH, GRAPHS
        return [None] * len(acts)
    inits = {i.name for i in model.graph.initializer}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for t in n.input:
            readers.setdefault(t, []).append(i)

    def one(act: Activation) -> Suffix | None:
        touched = {act.scale} | {x for b in act.biases for x in b}
        region = {j for t in touched for j in readers.get(t, [])}
        todo = list(region)
        while todo:
            i = todo.pop()
            for t in nodes[i].output:
                for j in readers.get(t, []):
                    if j not in region:
                        region.add(j)
                        todo.append(j)
            for t in nodes[i].input:
                j = producer.get(t)
                if j is not None and j not in region and nodes[j].op_type != "QuantizeLinear":
                    region.add(j)
                    todo.append(j)
        made = {o for i in region for o in nodes[i].output}
        cut = sorted({t for i in region for t in nodes[i].input if t and t not in inits and t not in made})
        outputs = [o.name for o in model.graph.output if o.name in made]
        return Suffix(sorted(region), cut, outputs) if outputs else None

    return [one(act) for act in acts]


def _suffix_model(model, part: Suffix, batches: list[dict[str, np.ndarray]]):
    """PART of MODEL (a ModelProto, its initializers as they stand) as a model whose inputs are
    the cut tensors, typed and shaped as in BATCHES (a dimension that varies between them left free)."""
    from onnx import helper

    def spec(t: str):
        shapes = {b[t].shape for b in batches}
        dims = [d if len({s[k] for s in shapes}) == 1 else None for k, d in enumerate(batches[0][t].shape)]
        return helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(batches[0][t].dtype), dims)

    nodes = [model.graph.node[i] for i in part.nodes]
    used = {t for n in nodes for t in n.input}
    graph = helper.make_graph(
        nodes,
        "suffix",
        [spec(t) for t in part.cut],
        [o for o in model.graph.output if o.name in part.outputs],
        [i for i in model.graph.initializer if i.name in used],
        value_info=[v for v in model.graph.value_info if v.name in used],
    )
    return helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)


def _session(model, threads: int, fused: bool):
    """A session of MODEL: its fused INT8 kernels, or (not FUSED) its Q/DQ computed as written."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    if not fused:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _outputs(model, samples: Samples, fixed: int | None, threads: int, fused: bool) -> list[np.ndarray]:
    """MODEL's (a ModelProto) outputs on SAMPLES in ONNX Runtime (FUSED: all graph optimizations on)."""
    session = _session(model, threads, fused)
    return batching.outputs(lambda feeds: session.run(None, feeds), samples.inputs, fixed, 16)


class _Cache:
    """The tensors the suffixes of the next activations read, on the search samples, computed by
    the whole model as its ranges stand (in batches as the model takes them, so any layout holds),
    and its outputs; kept until a factor is adopted."""

    def __init__(self, model, samples: Samples, fixed: int | None, threads: int, fused: bool):
        self.model, self.samples, self.fixed, self.threads, self.fused = model, samples, fixed, threads, fused
        self.batches: list[tuple[dict[str, np.ndarray], int]] = []
        self.outputs: dict[str, np.ndarray] = {}
        self.window = 4  # activations whose tensors one run keeps, sized to CACHE_BYTES after it

    def fill(self, tensors: list[str]) -> None:
        """Run the whole model once, keeping TENSORS (graph inputs come from the feeds)."""
        from onnx import helper

        m = type(self.model)()
        m.CopyFrom(self.model)
        names = [o.name for o in m.graph.output]
        inputs = {i.name for i in m.graph.input}
        extra = [t for t in tensors if t not in inputs and t not in names]
        m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in extra)
        session = _session(m, self.threads, self.fused)
        kept, reals = [], []

        def run(feeds):
            out = dict(zip(names + extra, session.run(None, feeds), strict=True))
            kept.append({t: feeds[t] if t in inputs else out[t] for t in tensors})
            return [out[n] for n in names]

        joined = batching.outputs(run, self.samples.inputs, self.fixed, 16, reals.append)
        self.batches = list(zip(kept, reals, strict=True))
        self.outputs = dict(zip(names, joined, strict=True))
        per_tensor = sum(v.nbytes for f, _ in self.batches for v in f.values()) / max(len(tensors), 1)
        self.window = max(1, int(CACHE_BYTES / max(per_tensor * 2, 1)))  # a suffix reads ~2 tensors

    def holds(self, tensors: list[str]) -> bool:
        return bool(self.batches) and all(t in self.batches[0][0] for t in tensors)

    def feeds(self) -> list[dict[str, np.ndarray]]:
        return [f for f, _ in self.batches]

    def run(self, suffix_model, part: Suffix) -> list[np.ndarray]:
        """The model's outputs with SUFFIX_MODEL (PART, as the factor sets it) run on the kept tensors."""
        session = _session(suffix_model, self.threads, self.fused)
        runs = ((session.run(None, {t: feeds[t] for t in part.cut}), real) for feeds, real in self.batches)
        computed = dict(zip(part.outputs, batching.join(runs, self.fixed), strict=True))
        return [computed.get(o.name, self.outputs[o.name]) for o in self.model.graph.output]


def judged_kinds(ref: list[np.ndarray], names: list[str], declared: dict | None = None) -> list[str]:
    """How _error judges each of fp32's outputs REF: its output kind (the one the user DECLARED for
    it with --output-kind, else the one its name and values say), or "probabilities" for class
    scores that already are probabilities, a Softmax's or each class's own Sigmoid (renormalized:
    a softmax of torchcrepe's 360 sigmoid pitch scores is nearly uniform, its divergence 8e-7, and
    the search stopped as if nothing were left while 20 % of the pitches differed)."""
    declared = declared or {}
    kinds = [declared.get(n) or output_kind(r, n) for r, n in zip(ref, names, strict=True)]
    return [
        "probabilities"
        if k in ("classes", "sequence") and (probability_rows(vectors(r)) or independent_scores(r))
        else k
        for k, r in zip(kinds, ref, strict=True)
    ]


def output_error(outs: list[np.ndarray], ref: list[np.ndarray], kinds: list[str]) -> float:
    """How far OUTS are from REF, summed over the outputs: for class scores (edgekit's output kinds;
    "probabilities" where the model ends in a Softmax) the KL divergence of their probabilities from
    fp32's (the softmax of logits, or the values a Softmax gave: a softmax of PP-OCRv4's recognizer's
    6625 probabilities measured 7e-6, and the search stopped as if nothing were left), else the
    squared error over fp32's variance. The squared error of logits lowered EfficientNet-Lite2's on
    held-out samples by 29 % with factors that cost 2.8 points of top-1 agreement; with the KL, Lite2
    kept its agreement and MobileNetV2 most of its gain."""
    total = 0.0
    for o, r, kind in zip(outs, ref, kinds, strict=True):
        o, r = vectors(o), vectors(r)
        if kind in ("classes", "sequence", "probabilities"):
            probabilities = kind == "probabilities"
            p, q = log_probabilities(r, probabilities), log_probabilities(o, probabilities)
            total += float(np.mean(np.sum(np.exp(p) * (p - q), axis=-1)))
        else:
            total += float(np.mean((o - r) ** 2) / max(float(np.var(r)), 1e-12))
    return total


def _factor(ceiling: float, current: float, error) -> tuple[float, float]:
    """The factor for one range, and the error with it: the best of COARSE by ERROR(f) (CURRENT at
    1), then of its neighbours; 1 unless the best lowers the error by GAIN."""
    errors = {1.0: current}
    for f in (f for f in COARSE if f <= ceiling):
        errors[f] = error(f)
    chosen = min(errors, key=errors.get)
    if chosen != 1.0:
        for f in (chosen * REFINE, chosen / REFINE):
            if f <= ceiling:
                errors[f] = error(f)
        chosen = min(errors, key=errors.get)
    if errors[chosen] >= current * (1 - GAIN):
        return 1.0, current
    return chosen, errors[chosen]


def search(
    int8: Path,
    fp32: Path,
    source: Path,
    calib: Samples,
    fixed: int | None,
    threads: int = 0,
    budget: float | None = None,
    declared: dict | None = None,
    fused: bool = True,
) -> dict:
    """The factor of each activation range of INT8 (a QDQ file, quantized from SOURCE) that lowers
    its outputs' error to FP32's on the first SAMPLES calibration samples (scale initializer ->
    factor, only where not 1), with the search's record: up to SWEEPS sweeps over the activations,
    each from the ranges the last left, while the last scaled any and BUDGET (seconds, all sweeps
    together) lasts; over BUDGET, the last activations that fit it (none: skipped), and the first
    sweep cut short is the only one. DECLARED: the output kinds the user gave (`judged_kinds`).
    FUSED: INT8 run on ORT's fused kernels, else its Q/DQ as written (target_cpu.fused_here)."""
    import onnx

    started = time.perf_counter()
    found = _sweep(int8, fp32, source, calib, fixed, threads, budget, None, declared, 1, fused)
    factors, record = dict(found["factors"]), found["record"]
    if "skipped" in record:
        return found
    errors = [record["output_error"][1]]
    with tempfile.TemporaryDirectory(prefix="edgekit-ranges-") as tmp:
        current = Path(tmp) / "swept.onnx"
        model_file.save(onnx.load(str(int8)), current)
        # a sweep the budget cut short leaves none for another
        while (
            found["factors"] and len(errors) < SWEEPS and not {"partial", "stopped"} & found["record"].keys()
        ):
            left = None if budget is None else budget - (time.perf_counter() - started)
            if left is not None and left <= 0:
                break
            apply(current, source, found["factors"])
            n, sweep = record["samples"], len(errors) + 1
            found = _sweep(current, fp32, source, calib, fixed, threads, left, n, declared, sweep, fused)
            if "skipped" in found["record"]:
                break
            for key in ("partial", "stopped"):
                if key in found["record"]:
                    record[key] = f"sweep {len(errors) + 1}: {found['record'][key]}"
            for name, f in found["factors"].items():
                factors[name] = factors.get(name, 1.0) * f
            errors.append(found["record"]["output_error"][1])
            record["output_error"][1] = errors[-1]
            if "held_out_error" in record:
                record["held_out_error"][1] = found["record"]["held_out_error"][1]
    record.update(
        scaled=len(factors),
        factors={name: round(f, 4) for name, f in factors.items()},
        sweeps=len(errors),
        sweep_errors=errors,
        seconds=round(time.perf_counter() - started, 1),
    )
    if not fused:  # this CPU's fused kernels saturate where the target's do not
        record["computed"] = "Q/DQ as written"
    return {"factors": factors, "record": record}


def _work(fp32: Path, samples: Samples, fixed: int | None) -> int:
    """FP32's multiply-accumulates on one of SAMPLES (its shapes: a dynamic input's axes as they are
    there; 0 where shape inference knows none of its layers)."""
    feeds, _ = next(batching.batches(samples.take(slice(0, 1)).inputs, fixed, 1))
    try:
        counts = macs.macs(fp32, {k: np.shape(v) for k, v in feeds.items()})
    except Exception:  # shape inference gave up on an op: no count, no growth
        return 0
    return sum(counts.values())


def _sweep(
    int8: Path,
    fp32: Path,
    source: Path,
    calib: Samples,
    fixed: int | None,
    threads: int,
    budget: float | None,
    samples: int | None,
    declared: dict | None = None,
    sweep: int = 1,
    fused: bool = True,
) -> dict:
    """One sweep of `search` (its SWEEP-th) over INT8's activations in graph order, choosing on
    SAMPLES samples (the first sweep: as many as its projected cost allows)."""
    import onnx

    from edgekit.runtimes.ort import threads as session_threads

    started = time.perf_counter()
    model, reference = onnx.load(str(int8)), onnx.load(str(fp32))
    if model_file.too_large(model):  # a session is made from memory per trial
        return {"factors": {}, "record": {"skipped": "the model is over 2 GB"}}
    acts = activations(model, onnx.load(str(source), load_external_data=False))
    threads = session_threads(threads)

    # searched on the first SAMPLES, each factor kept only where the next VALIDATE agree
    def split(n: int) -> tuple[list[Samples], list[list[np.ndarray]]]:
        """The first N calibration samples and the VALIDATE after them, with fp32's outputs."""
        parts = [
            s
            for s in (calib.take(slice(0, min(n, len(calib)))), calib.take(slice(n, n + VALIDATE)))
            if len(s)
        ]
        return parts, [
            [o.astype(np.float64) for o in _outputs(reference, s, fixed, threads, True)] for s in parts
        ]

    sets, refs = split(samples or SAMPLES)
    names = [o.name for o in reference.graph.output]
    kinds = judged_kinds(refs[0], names, declared) if sets else []
    decoded = output_tail.decoded(reference.graph)  # a detection's boxes beside its scores
    kinds = ["other" if n in decoded else k for n, k in zip(names, kinds, strict=False)]
    judged = dict(zip(names, kinds, strict=False))  # each output's error: KL or squared (the record's)
    scaler = _Scaler(model, acts)

    def error(which: int = 0) -> float:
        """The model's error as its ranges stand, on sample set WHICH."""
        return output_error(_outputs(model, sets[which], fixed, threads, fused), refs[which], kinds)

    def scaled(act: Activation, f: float, which: int = 0) -> float:
        scaler.set(act, f)
        return error(which)

    parts = suffixes(model, acts)
    timed = time.perf_counter()
    before = [error(0)] if sets else []
    # trials run on sets[0], each on its suffix (its share of the nodes), plus the whole-model runs
    # that keep the suffixes' tensors
    unit = time.perf_counter() - timed
    runs = [TRIALS * (len(p.nodes) / len(model.graph.node) if p else 1) + REFILLS for p in parts]
    costs = [unit * r for r in runs]
    if before and before[0] < NEGLIGIBLE:
        negligible = f"output error {before[0]:.1e} is already negligible"
        return {"factors": {}, "record": {"skipped": negligible, "judged": judged}}
    grow = GROW * (1.0 if budget is None else min(1.0, budget / BUDGETED))
    most = min(MOST, len(calib) - VALIDATE)  # counted only where the samples could grow
    growable = samples is None and sets and most > len(sets[0])
    work = SWEEPS * sum(runs) * _work(fp32, sets[0], fixed) * SAMPLES if growable else 0
    more = min(most, SAMPLES * round(grow / work)) if work else 0
    if sets and more > len(sets[0]):  # little work: chosen on more samples
        had = len(sets[0])
        sets, refs = split(more)
        costs = [c * more / had for c in costs]
        before[0] = error(0)
    left = None if budget is None else budget - (time.perf_counter() - started)
    if left is not None and sum(costs) > left and len(sets[0]) > FEWEST:  # fewer samples, all ranges
        had, n = len(sets[0]), max(FEWEST, int(len(sets[0]) * left / sum(costs)))
        sets[0] = sets[0].take(slice(0, n))
        refs[0] = [o.astype(np.float64) for o in _outputs(reference, sets[0], fixed, threads, True)]
        costs = [c * n / had for c in costs]
        before[0] = error(0)
    # the held-out errors before the window below is chosen, so that it fits what is left after them
    # (chosen before, a loaded machine's window could be spent on them and search nothing)
    before += [error(i) for i in range(1, len(sets))]
    # over the budget, the last activations it fits are searched (the cheapest trials, and the
    # ranges nearest the outputs: MobileNetV2's gain was in its last blocks)
    first, over = 0, ""
    left = None if budget is None else budget - (time.perf_counter() - started)
    if left is not None and sum(costs) > left:
        first, fits = len(acts), 0.0
        while first and fits + costs[first - 1] <= left:
            first -= 1
            fits += costs[first]
        over = (
            f"about {sum(costs):.3g} s projected for {len(acts)} activations, over the {budget:.3g} s budget"
        )
        if first == len(acts):
            return {"factors": {}, "record": {"skipped": f"{over}; --range-search runs it"}}
    best = list(before)
    factors: dict[str, float] = {}
    caches = [_Cache(model, s, fixed, threads, fused) for s in sets]

    def trial(k: int, which: int = 0):
        """ERROR(f) for the factor f of activation K on sample set WHICH: its suffix run on the kept
        tensors (kept for it and the next ones where they are not), or the whole model where it
        has no suffix."""
        act, part, cache = acts[k], parts[k], caches[which]
        if part is None:
            return lambda f: scaled(act, f, which)
        if not cache.holds(part.cut):
            cache.fill(sorted({t for p in parts[k : k + cache.window] if p for t in p.cut}))
        sub = _suffix_model(model, part, cache.feeds())
        sub_scaler = _Scaler(sub, [act])

        def error_with(f: float) -> float:
            sub_scaler.set(act, f)
            return output_error(cache.run(sub, part), refs[which], kinds)

        return error_with

    stopped = None
    with progress() as bar:
        task = bar.add_task(f"activation ranges (sweep {sweep})", total=len(acts) - first)
        for k in range(first, len(acts)):
            if budget is not None and time.perf_counter() - started > budget:
                stopped = k
                break
            act = acts[k]
            chosen, err = _factor(act.ceiling, best[0], trial(k))
            held = trial(k, 1)(chosen) if chosen != 1.0 and len(sets) > 1 else None
            if held is not None and held >= best[1] * (1 - GAIN):
                chosen, err = 1.0, best[0]
            scaler.set(act, chosen)
            if chosen != 1.0:
                factors[act.scale] = chosen
                best = [err, held] if held is not None else [err]
                for cache in caches:
                    cache.batches = []  # the kept tensors are the old ranges'
            bar.advance(task)
    record = {
        "activations": len(acts),
        "searched": [first, len(acts) if stopped is None else stopped],  # graph-order indices: from, to
        "scaled": len(factors),
        "factors": {name: round(f, 4) for name, f in factors.items()},  # what the manifest shows
        "output_error": [round(before[0], 6), round(best[0], 6)],
        "judged": judged,
        "samples": len(sets[0]) if sets else 0,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if len(sets) > 1:
        record["held_out_error"] = [round(before[1], 6), round(best[1], 6)]
        record["held_out_samples"] = len(sets[1])
    if first:
        record["partial"] = f"{over}: only the last {len(acts) - first} fit it; --range-search searches all"
    if stopped is not None:
        record["stopped"] = (
            f"the {budget:.3g} s budget ran out before the last {len(acts) - stopped} of {len(acts)} "
            "activations; --range-search searches all"
        )
    return {"factors": factors, "record": record}


def apply(path: Path, source: Path, factors: dict[str, float]) -> int:
    """Scale the activation ranges of PATH (a QDQ file quantized from SOURCE, rewritten) by FACTORS
    (scale initializer -> factor, from `search`); how many it scaled (a trial that left a layer fp32
    lacks some)."""
    import onnx

    if not factors:
        return 0
    model = onnx.load(str(path))
    source_graph = onnx.load(str(source), load_external_data=False)
    acts = [a for a in activations(model, source_graph) if a.scale in factors]
    scaler = _Scaler(model, acts)
    for act in acts:
        scaler.set(act, factors[act.scale])
    model_file.save(model, path)
    return len(acts)
