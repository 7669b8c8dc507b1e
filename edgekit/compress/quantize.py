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
import io
import tempfile
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit import batching
from edgekit.compress import weight_pairs
from edgekit.compress.weight_pairs import PairLayer
from edgekit.data import Samples
from edgekit.errors import EdgekitError, first_line
from edgekit.progress import progress
from edgekit.target_cpu import CLASSES, FORMS, Form, TargetCpu, auto_form, resolve

COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


class Int8Config(BaseModel):
    """Static INT8 PTQ. Dynamic quantization is deliberately absent: on CNNs it turns every Conv
    into ConvInteger, many times slower than fp32 (see docs/guide/quantize.md)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    # percentile 99.99 beat MinMax on SQNR and top-1 agreement on both bench models
    # (docs/BENCHMARKS.md); MinMax is 3x quicker to calibrate
    calibration: Literal["minmax", "entropy", "percentile"] = "percentile"
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
    preprocess: bool = True
    exclude_nodes: list[str] = Field(default_factory=list)

    @classmethod
    def tensorrt(cls, **overrides) -> Int8Config:
        """TensorRT's explicit-quantization form: int8 activations with zero-point 0, float biases."""
        form = {
            "activation_type": "int8",
            "activation_symmetric": True,
            "quantize_bias": False,
            "weight_type": "int8",
            "reduce_range": "none",  # a GPU's INT8 does not saturate: the CPU form does not apply
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


class _Reader:
    """Feeds calibration batches (edgekit.batching's) to ORT's calibrator and advances a progress bar."""

    def __init__(self, samples: Samples, fixed: int | None, batch: int, bar, task):
        self._batches = batching.batches(samples.inputs, fixed, batch)
        self._bar, self._task = bar, task

    def get_next(self):
        feeds, real = next(self._batches, (None, 0))
        self._bar.advance(self._task, real)
        return feeds

    def rewind(self):  # ORT calls this only for multi-pass calibrators; one pass is enough here
        pass


def quantize_int8(fp32: Path, out: Path, calib: Samples, cfg: Int8Config, batch_fixed: int | None):
    """Write a QDQ INT8 model to `out`; return a summary of what was quantized."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if cfg.target_cpu is None:  # a caller that chose no CPU: the form that holds on this one
        cfg = for_cpu(cfg, resolve())
    reader_cls = type("Reader", (_Reader, CalibrationDataReader), {})
    qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[cfg.calibration]
    extra = {
        "WeightSymmetric": True,
        "ActivationSymmetric": cfg.activation_symmetric,
        "QuantizeBias": cfg.quantize_bias,
        "CalibMaxIntermediateOutputs": 8,  # MinMax merges ranges every 8 batches: bounded memory
    }
    with tempfile.TemporaryDirectory(prefix="edgekit-q-") as tmp:
        src = Path(fp32)
        if cfg.preprocess:
            src = Path(tmp) / "pre.onnx"
            try:
                quant_pre_process(str(fp32), str(src))
            except Exception:  # symbolic shape inference does not know every op
                quant_pre_process(str(fp32), str(src), skip_symbolic_shape=True)
        overrides, pairs = reduced_weights(src, cfg)
        if overrides:
            extra["TensorQuantOverrides"] = overrides
        batch = batch_fixed or _even_batch(len(calib), cfg.calib_batch)
        with progress() as bar:
            task = bar.add_task(f"calibrating ({cfg.calibration})", total=len(calib))

            def reader(samples: Samples):
                return reader_cls(samples, batch_fixed, batch, bar, task)

            if cfg.calibration == "minmax":
                data, cache = reader(calib), None
            else:
                data, cache = None, _histogram_ranges(src, calib, batch, cfg, Path(tmp), reader)
            try:
                quantize_static(
                    str(src),
                    str(out),
                    data,
                    quant_format=QuantFormat.QDQ,
                    per_channel=cfg.per_channel,
                    activation_type=qtype[cfg.activation_type],
                    weight_type=qtype[cfg.weight_type],
                    calibrate_method=method,
                    nodes_to_exclude=cfg.exclude_nodes or None,
                    extra_options=extra,
                    calibration_cache_path=cache,
                )
            except Exception as e:
                raise EdgekitError(f"INT8 quantization failed: {first_line(e)}") from None
    summary = summarize(out)
    if cfg.reduce_range != "none":
        summary["seven_bit_weights"] = len(overrides) - len(pairs)
    if pairs:
        summary["pair_bounded_weights"] = len(pairs)
        summary["pair_capped_values"] = weight_pairs.apply(out, pairs)
    return summary


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


def _even_batch(n: int, cap: int) -> int:
    """The largest batch size up to `cap` that divides `n`: ORT's histogram calibrators stack
    per-batch outputs into one array and fail when the last batch is smaller."""
    return next(b for b in range(min(cap, n), 0, -1) if n % b == 0)


def _histogram_ranges(model: Path, calib: Samples, batch: int, cfg: Int8Config, tmp: Path, reader) -> Path:
    """Percentile or entropy ranges, saved as a calibration cache for `quantize_static`.

    edgekit runs ORT's histogram calibrator itself for three reasons: `quantize_static` builds
    the entropy calibrator with 128 bins for 128 levels (one candidate: "entropy" would silently
    be MinMax); its percentile ranges are symmetric unless told (half the u8 range lost after a
    ReLU); and it keeps every batch's activations until the end (GBs at 224×224), where feeding
    chunks lets the histograms merge as they go.
    """
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        create_calibrator,
        save_tensors_data,
    )

    options: dict = {"symmetric": cfg.activation_symmetric, "num_bins": 2048}
    if cfg.calibration == "entropy":
        method = CalibrationMethod.Entropy
        options["num_quantized_bins"] = 128
    else:
        method = CalibrationMethod.Percentile
        options["percentile"] = cfg.percentile
    calibrator = create_calibrator(
        model,
        augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=method,
        extra_options=options,
    )
    step = 4 * batch
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its progress to stdout
            for i in range(0, len(calib), step):
                calibrator.collect_data(reader(calib.take(slice(i, i + step))))
            ranges = calibrator.compute_data()
    except Exception as e:
        raise EdgekitError(f"{cfg.calibration} calibration failed: {first_line(e)}") from None
    cache = tmp / "ranges.json"
    save_tensors_data(ranges, cache)
    return cache


def summarize(path: Path) -> dict:
    """How many compute ops run quantized (activation and weight both from DequantizeLinear),
    and which stayed fp32."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    quantized, left = Counter(), Counter()
    for n in graph.node:
        if n.op_type in COMPUTE_OPS:
            is_q = len(n.input) > 1 and all(producers.get(i) == "DequantizeLinear" for i in n.input[:2])
            (quantized if is_q else left)[n.op_type] += 1
    return {
        "quantized_ops": dict(quantized),
        "fp32_compute_ops": dict(left),
        "qdq_pairs": sum(1 for n in graph.node if n.op_type == "QuantizeLinear"),
    }
