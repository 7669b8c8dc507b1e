"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization") on
the weights of a QDQ model: each integer weight is rounded up or down, whichever makes the layer's
outputs on the calibration data closer to fp32, instead of to the nearest level.

Per Conv/Gemm (and MatMul with a constant 2-D weight, a transformer's: a Gemm whose rows are its
tokens), with W the fp32 weight, s and z the scale and zero point the quantizer chose (kept, so
every INT8 form keeps working: 7-bit weights, the u8s8-pair scales) and X the layer's inputs,
the rounding minimizes ||W X - W~ X||^2 / rows + lambda * sum(1 - |2h(V) - 1|^beta) over V, with
W~ = s * (clip(floor(W / s) + z + h(V), lo, hi) - z) and h the rectified sigmoid (zeta 1.1, gamma
-0.1); beta anneals from 20 to 2 after a warm-up without the regularizer, then h(V) >= 0.5 rounds
up. [lo, hi] is the range the quantizer used (the channel's largest level, so 7 bits stay 7 bits),
so every new level is floor or ceil of W / s. The loss needs only the Gram matrix X^T X of the
inputs (per group: a depthwise conv's channels are separate problems), summed over sampled output
positions in the calibration pass itself (edgekit.compress.calibrate's observers) and factored to
its leading eigen-directions; the layers are optimized together (Adam is per weight, so each
layer's result is the one a loop of its own would give). A layer keeps nearest rounding where
AdaRound's does not lower its error on those rows.

X are the layer's inputs in the fp32 model, not in the partly quantized one (AIMET and the paper
use the latter where they can): one calibration pass serves ranges, bias correction and AdaRound.
Bias correction runs after (as in AIMET) and removes the mean error that is left.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit import interrupts
from edgekit.compress import model_file
from edgekit.compress.bias_correction import quantized_layers, weight_levels
from edgekit.progress import progress

# AIMET's default is 10,000 iterations at lr 1e-3; on EfficientNet-Lite1's layers 300 at 1e-2 left
# 0.36 of nearest rounding's output error (500: 0.33, 200: 0.40) and cost ~0.2 s an iteration on one core
ITERATIONS = 300
# the fewest a time budget may cut them to: all-MiniLM-L6-v2's embeddings on 300 held-out sentences
# kept 24.1 dB of SQNR after 300, 23.3 after 100, 22.2 after 50, under nearest rounding's 22.7 (no
# layer's own error above nearest rounding's, the model's above it); where even 100 do not fit, the
# layers of most work keep nearest rounding until they do
MIN_ITERATIONS = 100
LR = 1e-2
WARMUP = 0.2  # the first fifth without the regularizer
BETA = (20.0, 2.0)
REG = 0.01  # lambda, AIMET's default, with the error summed over output channels, averaged over rows
ZETA, GAMMA = 1.1, -0.1
ROWS = 16384  # input rows (sampled output positions) per layer over all the calibration samples
TAIL = 0.01  # the share of the inputs' energy left out where the loss is factored (as good as 1e-4 there)
MAX_K = 4096  # a layer whose rows are longer (a dense 3x3 conv over > 455 channels) keeps nearest
# what a weight costs at the peak of the solve (its share's flat tensors and levels, the step's
# buffers, Adam's state, what the heap keeps of freed blocks): 71 bytes on two BERT-base layers'
# products (bench/adaround_memory.py; 198 before the levels were int16, the masks bool, the shares'
# tensors one allocation each and the steps free of temporaries); the layers that would not fit the
# int8 pass's memory budget (edgekit.memory) keep nearest rounding, the largest first
BYTES_PER_WEIGHT = 80
# what a layer's Gram holds through calibration, an entry of its (groups, K, K): float64. BERT-base's
# 72 products hold ~1.2 GB of them, BERT-large's ~4.2 GB; past the share of the calibration memory
# budget they are given, the largest are not collected (those layers keep nearest rounding)
GRAM_BYTES = 8
OPS = ("Conv", "Gemm", "MatMul")  # a MatMul's when its second input is a 2-D constant (a transformer's)


@dataclass
class Gram:
    """One layer's input rows X summed as X^T X per group (groups, K, K), over ROWS rows: the
    patches a Conv's sampled output positions read (PER_SAMPLE of each sample's), or a Gemm's or
    MatMul's rows (all of them: a token is a row)."""

    node: object  # the fp32 layer (onnx NodeProto)
    groups: int
    k: int
    per_sample: int
    conv: tuple | None = None  # a Conv's kernel, strides, pads (top, left, bottom, right), dilations
    total: object = None  # torch float64 (groups, K, K)
    rows: int = 0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def add(self, x: np.ndarray) -> None:
        import torch

        cols = self._columns(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        part = torch.bmm(cols, cols.transpose(1, 2)).double()
        if self.total is None:
            self.total = part
        else:
            self.total += part  # in place: no third (groups, K, K) beside the two
        self.rows += cols.shape[2]

    def _columns(self, x):
        """X's rows for this layer as columns (groups, K, rows), each row the patch a sampled
        output position of a Conv reads, in the weight's (channel, ky, kx) order: gathered from X
        itself (a tap in the padding reads any value, then zeroed), without a padded copy."""
        import torch

        if self.conv is None:
            return x.reshape(-1, self.k).T[None]
        (kh, kw), (sh, sw), (t, left, b, r), (dh, dw) = self.conv
        samples, channels, h, w = x.shape
        ho, wo = (h + t + b - dh * (kh - 1) - 1) // sh + 1, (w + left + r - dw * (kw - 1) - 1) // sw + 1
        n = min(ho * wo, self.per_sample)
        pos = torch.from_numpy(np.sort(self.rng.choice(ho * wo, n, replace=False)))
        iy = ((pos // wo) * sh - t)[None, :] + (torch.arange(kh) * dh)[:, None]  # (kh, n)
        ix = ((pos % wo) * sw - left)[None, :] + (torch.arange(kw) * dw)[:, None]  # (kw, n)
        inside = ((iy >= 0) & (iy < h))[:, None] & ((ix >= 0) & (ix < w))[None]  # (kh, kw, n)
        at = (iy.clamp(0, h - 1)[:, None] * w + ix.clamp(0, w - 1)[None]).reshape(-1)  # (taps * n,)
        if x.numel() < at.numel() * samples * channels:  # patches overlap: transpose the input
            flat = x.transpose(0, 1).reshape(channels, -1)  # (C, samples * H * W)
            index = (at.reshape(-1, 1, n) + torch.arange(samples)[:, None] * h * w).reshape(-1)
            cols = flat.index_select(1, index).reshape(channels, kh * kw, samples, n)
            if t or left or b or r:
                cols.mul_(inside.reshape(1, -1, 1, n))
            return cols.reshape(self.groups, self.k, -1)
        cols = torch.gather(x.reshape(samples * channels, -1), 1, at.expand(samples * channels, -1))
        cols = cols.reshape(samples, channels * kh * kw, n)
        if t or left or b or r:
            cols.mul_(inside.reshape(1, -1, n).repeat(1, channels, 1))
        return cols.permute(1, 0, 2).reshape(self.groups, self.k, -1)


@dataclass
class Collected:
    """The layers' Grams (by fp32 weight name) and the levels already chosen for them: the mixed-
    precision search writes many models from one calibration, and each reuses them."""

    grams: dict[str, Gram]
    chosen: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0
    limited: dict = field(default_factory=dict)  # what the time and memory budgets cut, for the summary

    def observers(self) -> dict[str, Callable[[np.ndarray], None]]:
        """Per input tensor, what adds a calibration run's values to the Grams of its layers."""
        by_input: dict[str, list[Gram]] = {}
        for g in self.grams.values():
            by_input.setdefault(g.node.input[0], []).append(g)
        return {name: lambda x, gs=gs: [g.add(x) for g in gs] for name, gs in by_input.items()}


def collect(fp32: Path, samples: int, memory: int | None = None) -> Collected:
    """Empty Grams for the Conv (2-D), Gemm and MatMul layers of FP32 that AdaRound can round, sized for
    SAMPLES calibration samples, as many as fit MEMORY bytes (None: all), the smallest first."""
    import onnx
    from onnx import helper

    graph = onnx.load(str(fp32), load_external_data=False).graph
    dims = {i.name: list(i.dims) for i in graph.initializer}
    readers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    per_sample = max(1, math.ceil(ROWS / max(samples, 1)))
    grams = {}
    for node in graph.node:
        if node.op_type not in OPS or len(node.input) < 2 or node.input[1] not in dims:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        shape, name = dims[node.input[1]], node.input[1]
        if node.input[0] in dims or readers[name] > 1:
            continue
        if node.op_type in ("Gemm", "MatMul"):  # a MatMul's rows: every token (all but its last axis)
            if attrs.get("transA") or len(shape) != 2:
                continue
            gram = Gram(node, 1, shape[1] if attrs.get("transB") else shape[0], per_sample)
        else:
            if len(shape) != 4 or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                continue
            groups = attrs.get("group", 1)
            conv = (
                tuple(shape[2:]),
                tuple(attrs.get("strides", (1, 1))),
                tuple(attrs.get("pads", (0, 0, 0, 0))),
                tuple(attrs.get("dilations", (1, 1))),
            )
            gram = Gram(node, groups, shape[1] * shape[2] * shape[3], per_sample, conv)
        if gram.k <= MAX_K:
            grams[name] = gram
    fits = dict(_fit_memory(list(grams.items()), lambda item: gram_bytes(item[1]), memory))
    left = len(grams) - len(fits)
    return Collected(fits, limited={"left_nearest_for_gram_memory": left} if left else {})


def gram_bytes(gram: Gram) -> int:
    """What GRAM holds once calibration has filled it."""
    return gram.groups * gram.k * gram.k * GRAM_BYTES


def apply(
    fp32: Path, qdq: Path, collected: Collected, budget: float | None = None, memory: int | None = None
) -> dict:
    """Round the weights of the QDQ model's layers found in COLLECTED (FP32: the model it was
    quantized from) by AdaRound, rewriting its integer initializers in place, within BUDGET seconds
    and MEMORY bytes (None: no limit); a summary."""
    import onnx
    from onnx import numpy_helper

    ref = onnx.load(str(fp32))
    ref_inits = {i.name: i for i in ref.graph.initializer}
    model = onnx.load(str(qdq))
    inits = {i.name: i for i in model.graph.initializer}
    todo, layers = [], []
    for src, _, weight in quantized_layers(ref.graph, model.graph, OPS):
        gram = collected.grams.get(src.input[1])
        solved = src.input[1] in collected.chosen  # here, or by the process that packed COLLECTED
        if not solved and (gram is None or gram.rows == 0):
            continue
        q_init = inits[weight.input[0]]
        q, scale, zp = weight_levels(weight, inits)
        q = q.astype(np.int16)
        w = numpy_helper.to_array(ref_inits[src.input[1]]).astype(np.float32)
        if w.shape != q.shape:
            continue
        layers.append((src.input[1], q_init, q))
        if not solved:
            info = np.iinfo(numpy_helper.to_array(q_init).dtype)
            todo.append((src.input[1], gram, w, q, scale, zp, info))
    start = time.perf_counter()
    kept, limited = _solve(todo, collected.chosen, budget, memory) if todo else (0, {})
    collected.seconds += time.perf_counter() - start
    collected.limited.update(limited)
    changed = 0
    for name, q_init, q in layers:
        new = collected.chosen[name]
        changed += int((new != q).sum())
        dtype = numpy_helper.to_array(q_init).dtype
        q_init.CopyFrom(numpy_helper.from_array(new.astype(dtype), q_init.name))
    model_file.save(model, qdq)
    return {
        "layers": len(layers),
        "kept_nearest": kept,
        "changed_weights": changed,
        "seconds": round(collected.seconds, 1),
        **collected.limited,
    }


def _layout(a: np.ndarray, gram: Gram) -> np.ndarray:
    """A weight-shaped array as (groups, output channels per group, K): rows that multiply the
    Gram's input rows."""
    if gram.conv is None:  # Gemm: B is (K, N), or (N, K) with transB
        return (a if _trans_b(gram.node) else a.T).reshape(1, -1, gram.k)
    return a.reshape(gram.groups, -1, gram.k)


def _unlayout(a: np.ndarray, shape: tuple, gram: Gram) -> np.ndarray:
    """The inverse of _layout: (groups, out, K) back to the weight's SHAPE."""
    if gram.conv is None:
        a = a.reshape(-1, gram.k)
        return a if _trans_b(gram.node) else a.T
    return a.reshape(shape)


def _trans_b(node) -> bool:
    return any(a.name == "transB" and a.i for a in node.attribute)


def _metric(gram: Gram):
    """The input rows' second moment (the Gram / rows, per group) for the loss tr(dW M dW^T), the
    mean squared output error: as M itself, or as a factor F with F F^T ~ M over its leading
    eigen-directions (all but TAIL of the energy) where that is cheaper (rank < K / 2; a Gemm
    after global pooling has a row per sample). Returns (M or F, whether it is F)."""
    import torch

    m = gram.total / gram.rows
    vals, vecs = torch.linalg.eigh(m)
    vals, vecs = vals.clamp(min=0).flip(-1), vecs.flip(-1)
    share = vals.cumsum(-1) / vals.sum(-1, keepdim=True).clamp(min=1e-30)
    rank = int((share < 1 - TAIL).sum(-1).max()) + 1
    if 2 * rank >= gram.k:
        return m.float(), False
    return (vecs[..., :rank] * vals[..., None, :rank].sqrt()).float(), True


def _times_m(d, m, factored: bool, out=None):
    """dW M (M = F F^T where FACTORED): half the gradient of tr(dW M dW^T), the layer's error; into
    OUT where given."""
    import torch

    if factored:
        return torch.matmul(torch.matmul(d, m), m.transpose(-1, -2), out=out)
    return torch.matmul(d, m, out=out)


@dataclass
class _Problem:
    """One layer's rounding in the (groups, out, K) layout, as torch tensors: the weight is
    W~ = s * (floor(W / s) + h), h in [0, 1] but held at 0 where LOW and at 1 where HIGH (a level
    the quantizer's range leaves out), so W - W~ = rest - s * h. The integer levels are int16 and
    the masks bool: a BERT-base has 85 M weights, and every byte a weight costs is 85 MB."""

    name: str
    shape: tuple
    gram: Gram
    v: object  # the rounding variables
    rest: object  # W - s * floor(W / s)
    s: object
    low: object  # h held at 0: rounding up would leave the quantizer's range
    high: object  # h held at 1: rounding down would
    floor: object  # floor(W / s) + zero point: the level rounding down
    nearest: object  # the quantizer's levels
    m: object  # the inputs' second moment or its factor (_metric)
    factored: bool


def _problem(name: str, gram: Gram, w, q, scale, zp, info, metric=None, into=None) -> _Problem:
    """One layer's _Problem; METRIC its _metric where made before; INTO: flat slices (v, rest, s,
    low, high, each the weight's size) its tensors are written into and kept as views of, so that a
    share's tensors are one allocation and a layer's temporaries are all its build leaves behind."""
    import torch

    w_, s_, z_, q_ = (
        torch.from_numpy(np.array(_layout(np.broadcast_to(a, w.shape), gram), np.float32))
        for a in (w, scale, zp, q)
    )
    # the quantizer's range: the largest level among the weights that share a scale
    n = (q_ - z_).abs().amax() if np.size(scale) == 1 else (q_ - z_).abs().amax(-1, keepdim=True)
    lo, hi = (z_ - n).clamp(min=info.min), (z_ + n).clamp(max=info.max)
    base = torch.floor(w_ / s_)
    # V starts where h(V) is the fraction W / s - floor(W / s): W~ = W before rounding
    p = ((w_ / s_ - base).clamp(1e-4, 1 - 1e-4) - GAMMA) / (ZETA - GAMMA)
    v = torch.log(p / (1 - p))
    rest = w_ - s_ * base
    low, high = hi - z_ - base <= 0, lo - z_ - base >= 1
    levels = (base + z_).to(torch.int16), q_.to(torch.int16)
    flat = [v, rest, s_, low, high]
    if into is not None:
        flat = [part.view(t.shape).copy_(t) for part, t in zip(into, flat, strict=True)]
    return _Problem(name, w.shape, gram, *flat[:3], *flat[3:], *levels, *(metric or _metric(gram)))


def _h(v, low, high):
    """The rectified sigmoid of V (0..1, reaching both ends), held at 0 where LOW and 1 where HIGH."""
    import torch

    h = (torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA).clamp_(0, 1)
    return h.masked_fill_(low, 0).masked_fill_(high, 1)


def _descend(
    problems: list[_Problem],
    flat: list,
    iterations: int,
    deadline: float | None,
    step: Callable[[], None] | None = None,
) -> int:
    """ITERATIONS of Adam on every layer's V: the error alone for the first WARMUP of them, then with
    the regularizer whose beta anneals linearly from BETA[0] to BETA[1], stopped at DEADLINE
    (perf_counter seconds; a machine busier than when the iterations were fitted); how many ran.
    All layers' V are one flat tensor (FLAT: PROBLEMS' by _build; Adam is per weight: each layer
    gets what a loop of its own would give); only the quadratic error is per layer. STEP is called
    after each iteration (the progress bar; it raises to stop)."""
    import torch

    v, *fixed = flat
    # fused: one kernel a step, no temporaries (the unfused step made two of v's size each time)
    opt, scratch = torch.optim.Adam([v], lr=LR, fused=True), _scratch(v)
    warm, it = int(WARMUP * iterations), 0
    while it < iterations and (deadline is None or time.perf_counter() < deadline):
        beta = BETA[1] + (BETA[0] - BETA[1]) * (1 - (it - warm) / max(iterations - warm, 1))
        v.grad = _gradient(v, *fixed, problems, beta if it >= warm else None, scratch)
        opt.step()
        it += 1
        if step is not None:
            step()
    return it


def _scratch(v) -> tuple:
    """Buffers shaped as V for _gradient's temporaries (four float, two bool), made once for a whole
    descent: a step that allocated its own each time grew each thread's heap with freed blocks the
    allocator kept (two of BERT-base's 768x3072 products: 150 bytes a weight at the peak, 110 with
    the buffers; 71 with Adam fused and the mask applied by masked_fill_)."""
    import torch

    floats = [torch.empty_like(v) for _ in range(4)]
    return (*floats, *(torch.empty_like(v, dtype=torch.bool) for _ in range(2)))


def _gradient(v, rest, s, low, high, problems: list[_Problem], beta: float | None, scratch=None):
    """The gradient over V (every layer's, flat, PROBLEMS' tensors views of these) of the layers'
    errors, plus the regularizer at BETA where given, computed in SCRATCH (_scratch; made here where
    not given): written out rather than traced by autograd, whose backward of the clamp, abs and
    pow over every weight cost more than the errors' products. d/dh of an error is -2 s dW M, of
    the regularizer -2 lambda beta |2h-1|^(beta-1) sign(2h-1); dh/dV is the rectified sigmoid's
    slope inside [0, 1] where h is not held, 0 elsewhere (tests/test_adaround.py checks it against
    autograd)."""
    import torch

    sig, h, d, grad, outside, above = scratch or _scratch(v)
    torch.sigmoid(v, out=sig)
    torch.mul(sig, ZETA - GAMMA, out=h).add_(GAMMA)
    torch.lt(h, 0, out=outside).logical_or_(torch.gt(h, 1, out=above)).logical_or_(low).logical_or_(high)
    h.clamp_(0, 1).masked_fill_(low, 0).masked_fill_(high, 1)
    torch.addcmul(rest, s, h, value=-1, out=d)  # W - W~
    at = 0
    for pr in problems:
        n = pr.v.numel()
        _times_m(d[at : at + n].view(pr.v.shape), pr.m, pr.factored, grad[at : at + n].view(pr.v.shape))
        at += n
    grad.mul_(s).mul_(-2)
    if beta is not None:
        u = h.mul_(2).sub_(1)
        slope = torch.abs(u, out=d).clamp_(min=1e-30).log_().mul_(beta - 1).exp_()  # |u|^(beta-1)
        grad.addcmul_(slope, u.sign_(), value=-2 * REG * beta)
    sig.sub_(torch.mul(sig, sig, out=d))  # the sigmoid's slope, sig (1 - sig)
    return grad.mul_(sig).mul_(ZETA - GAMMA).masked_fill_(outside, 0)


def _error(pr: _Problem, levels):
    """The mean squared output error (summed over channels) of the weight LEVELS."""
    d = pr.rest - pr.s * (levels - pr.floor)
    return (d * _times_m(d, pr.m, pr.factored)).sum()


def _work(pr: _Problem) -> int:
    """What an iteration costs a layer, about: its weights times the columns of its metric."""
    return pr.rest.numel() * pr.m.shape[-1]


def _shares(problems: list, n: int, work: Callable = _work) -> list[list]:
    """PROBLEMS in N shares of about equal WORK (largest first, each to the lightest share)."""
    loads, shares = [0] * n, [[] for _ in range(n)]
    for pr in sorted(problems, key=work, reverse=True):
        i = loads.index(min(loads))
        loads[i] += work(pr)
        shares[i].append(pr)
    return [share for share in shares if share]


def _fit(problems: list[_Problem], n: int, unit: float, left: float) -> tuple[int, list[_Problem]]:
    """The iterations and the layers that fit LEFT seconds on N cores, where an iteration of a share
    costs UNIT seconds per unit of _work: all ITERATIONS where they fit, else as many as fit down to
    MIN_ITERATIONS; where even those do not, the layers of most work are left out (they keep nearest
    rounding) until MIN_ITERATIONS of the rest fit."""
    kept = sorted(problems, key=_work)
    while kept:
        per_iteration = unit * max(sum(map(_work, share)) for share in _shares(kept, n))
        iterations = int(left / per_iteration) if per_iteration > 0 else ITERATIONS
        if iterations >= MIN_ITERATIONS:
            return min(iterations, ITERATIONS), kept
        kept.pop()
    return 0, []


def _probe(shares: list[list[_Problem]], flats: list, pool: ThreadPoolExecutor) -> float:
    """Seconds an iteration costs per unit of _work: one gradient of each share (FLATS: theirs by
    _build; the regularizer's included), run as the descent runs them, the slowest share's rate."""

    def once(share: list[_Problem], flat: list) -> float:
        start = time.perf_counter()
        _gradient(*flat, share, BETA[0])
        return (time.perf_counter() - start) / max(sum(map(_work, share)), 1)

    return max(pool.map(once, shares, flats))


def _solve(
    todo: list, chosen: dict[str, np.ndarray], budget: float | None = None, memory: int | None = None
) -> tuple[int, dict]:
    """AdaRound's levels for each layer of TODO into CHOSEN (weight name -> int16 levels in the
    weight's shape), within BUDGET seconds and MEMORY bytes (None: no limit); how many layers kept
    nearest rounding, and what a limit cut ({} where nothing): the iterations run, the layers left
    nearest for time, for memory."""
    import torch

    from edgekit.runtimes.ort import cpus

    if not todo:
        return 0, {}
    started = time.perf_counter()
    fits = _fit_memory(todo, lambda t: t[2].size * BYTES_PER_WEIGHT, memory)
    items = {t[0]: (t, _metric(t[1])) for t in fits}
    n = min(cpus(), len(fits))
    shares, flats = _build(list(items.values()), n)
    problems = [pr for share in shares for pr in share]

    # one torch thread per share of the layers, a share per core: each step is many small
    # operations, and torch's own threads waiting on each other ran 3-10x slower on a machine whose
    # other core was busy, while the shares never wait on each other (Lite1's 65 layers: 70 -> 40 s
    # on 2 cores); the layers are separate problems, so the split changes no level
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    iterations, solved, deadline, ran = ITERATIONS, problems, None, 0
    try:
        with ThreadPoolExecutor(max(n, 1)) as pool, progress() as bar:
            if budget is not None and problems:
                unit = _probe(shares, flats, pool)
                deadline = started + budget
                iterations, solved = _fit(problems, n, unit, deadline - time.perf_counter())
                if len(solved) < len(problems):  # built again as they were: no descent moved them
                    shares, flats = _build([items[pr.name] for pr in solved], n)
            task = bar.add_task("rounding weights (AdaRound)", total=iterations * len(shares))

            def step() -> None:
                # Ctrl-C reaches the main thread, waiting on the shares; each share stops at its next
                # iteration instead of running to the end of the budget
                interrupts.check()
                bar.advance(task)

            def descend(share: list[_Problem], flat: list) -> int:
                # subnormal numbers flushed to zero (a per-thread setting): once h(V) settles at 0 or
                # 1 Adam's squared gradients turn subnormal, 3x slower
                torch.set_flush_denormal(True)
                try:
                    return _descend(share, flat, iterations, deadline, step)
                finally:
                    torch.set_flush_denormal(False)

            ran = min(pool.map(descend, shares, flats), default=0)
    finally:
        torch.set_num_threads(threads)
    limited = {}
    if problems and ran < ITERATIONS:
        limited = {"iterations": ran, "budget_s": budget}
    if len(solved) < len(problems):
        limited["left_nearest_for_time"] = len(problems) - len(solved)
    if len(fits) < len(todo):
        limited["left_nearest_for_memory"] = len(todo) - len(fits)
    fitted = {t[0] for t in fits}
    for name, _, _, q, *_ in todo:
        if name not in fitted:
            chosen[name] = q.astype(np.int16)
    kept, rounded = len(todo) - len(problems), {pr.name: pr for share in shares for pr in share}
    with torch.no_grad():
        for pr in problems:
            pr = rounded.get(pr.name, pr)
            new = pr.floor + (_h(pr.v, pr.low, pr.high) >= 0.5)
            if pr.name not in rounded or _error(pr, new) >= _error(pr, pr.nearest):
                new, kept = pr.nearest, kept + 1
            chosen[pr.name] = _unlayout(new.numpy(), pr.shape, pr.gram)
    return kept, limited


def _build(items: list, n: int) -> tuple[list[list[_Problem]], list[list]]:
    """ITEMS ((todo entry, _metric) a layer) as problems in N shares by the work they will be
    (_work), and each share's flat v, rest, s, low and high: made once, its problems built straight
    into them (each problem's tensors views of them). A problem's own copies, freed in the descent's
    thread or between other layers' temporaries, were memory the heap kept."""
    import torch

    shares, flats = [], []
    for share in _shares(items, n, lambda item: item[0][2].size * item[1][0].shape[-1]):
        size = sum(t[2].size for t, _ in share)
        flat = [torch.empty(size), torch.empty(size), torch.empty(size)]
        flat += [torch.empty(size, dtype=torch.bool), torch.empty(size, dtype=torch.bool)]
        built, at = [], 0
        for t, metric in share:
            built.append(_problem(*t, metric, [f[at : at + t[2].size] for f in flat]))
            at += t[2].size
        shares.append(built)
        flats.append(flat)
    return shares, flats


def _fit_memory(items: list, cost: Callable, memory: int | None) -> list:
    """ITEMS (smallest COST in bytes first) as many as fit MEMORY bytes together (None: all); the
    largest are left out (their layers keep nearest rounding)."""
    order = sorted(items, key=cost)
    if memory is None:
        return order
    total, fits = 0, []
    for item in order:
        total += cost(item)
        if total > memory:
            break
        fits.append(item)
    return fits
