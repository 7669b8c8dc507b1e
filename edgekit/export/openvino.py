"""OpenVINO IR from an ONNX artifact: `openvino.convert_model` + `save_model`, or NNCF's
post-training quantization of an fp32 parent.

What edgekit adds over calling them: `save_model` compresses weights to fp16 unless told not to,
so an "fp32" IR would silently be fp16 — here the weight format is what `--precision` says; the
inference precision (OpenVINO's CPU plugin would pick bf16 on AVX-512 BF16 CPUs) is recorded in
the manifest and in the IR's runtime options, so every later run uses the one that was verified.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.errors import EdgekitError
from edgekit.target_cpu import TargetCpu

MODEL_FILE = "model.xml"
PRECISIONS = ("fp32", "fp16", "bf16")
QUANTIZERS = ("qdq", "nncf")
# --precision -> OpenVINO's INFERENCE_PRECISION_HINT on CPU. fp16 is a weight format (half the
# file); x86 CPUs decompress it and compute in f32, GPUs and NPUs compute in f16.
INFERENCE = {"fp32": "f32", "fp16": "f32", "bf16": "bf16"}


@dataclass(frozen=True)
class OpenVINOConfig:
    precision: str = "fp32"
    quantizer: str = "qdq"  # qdq: convert the parent as it is (its Q/DQ INT8 if quantized); nncf: PTQ

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgekitError(f"--precision {self.precision!r} is not one of {', '.join(PRECISIONS)}.")
        if self.quantizer not in QUANTIZERS:
            raise EdgekitError(f"--quantizer {self.quantizer!r} is not one of {', '.join(QUANTIZERS)}.")


def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise EdgekitError("--target openvino needs OpenVINO: pip install 'edgekit[openvino]'.") from None
    return ov


def build_ir(
    onnx_path: Path,
    out_dir: Path,
    cfg: OpenVINOConfig,
    calib: dict[str, np.ndarray] | None,
    target: TargetCpu | None = None,
    fixed: int | None = None,
) -> dict:
    """Write model.xml/.bin into OUT_DIR; returns the pass summary. CALIB (inputs by name, fed in
    batches of FIXED for a model whose batch is fixed) and the TARGET CPU are needed for
    --quantizer nncf only."""
    from edgekit.runtimes.ov import readable

    ov = _openvino()
    with readable(onnx_path) as path:
        model = ov.convert_model(path)
    summary: dict = {"openvino": ov.get_version(), "weights": "fp16" if cfg.precision == "fp16" else "fp32"}
    if cfg.quantizer == "nncf":
        # NNCF's overflow fix (7-bit weights) where u8 x s8 saturates, none where it cannot: its
        # default (the first layer only) fits neither kind of CPU
        fix = "enable" if target and target.saturates else "disable"
        model = _nncf_quantize(model, calib, fix, fixed)
        summary["quantizer"] = f"nncf.quantize (default preset, fast bias correction, overflow_fix={fix})"
        if target is not None:
            summary["target_cpu"] = {
                **target.record(),
                "form": f"nncf overflow_fix={fix}",
                "form_means": "7-bit weights: cannot saturate" if fix == "enable" else "8-bit weights",
            }
    # Read by compile_model when no hint is passed (plain OpenVINO users get the verified precision).
    model.set_rt_info(INFERENCE[cfg.precision], ["runtime_options", "INFERENCE_PRECISION_HINT"])
    ov.save_model(model, str(out_dir / MODEL_FILE), compress_to_fp16=cfg.precision == "fp16")
    ops: dict[str, int] = {}
    for op in model.get_ordered_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
    summary.update(
        inference_precision=INFERENCE[cfg.precision],
        nodes=sum(ops.values()),
        fake_quantize=ops.get("FakeQuantize", 0) + ops.get("FakeConvert", 0),
    )
    return summary


def _nncf_quantize(model, calib: dict[str, np.ndarray] | None, overflow_fix: str, fixed: int | None):
    """NNCF post-training quantization with its defaults but OVERFLOW_FIX, on the calibration
    samples one by one (in batches of FIXED, for a model whose batch is fixed)."""
    try:
        import nncf
    except ImportError:
        raise EdgekitError("--quantizer nncf needs NNCF: pip install 'edgekit[nncf]'.") from None
    if calib is None:
        raise EdgekitError("--quantizer nncf needs calibration data: --calib DIR|FILE.npz|module:function.")
    items = [feeds for feeds, _ in batching.batches(calib, fixed, 1)]
    advanced = nncf.AdvancedQuantizationParameters(overflow_fix=nncf.OverflowFix(overflow_fix))
    return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), advanced_parameters=advanced)


def open_axes_hint(refusal: str, spec) -> str:
    """What to do where OpenVINO's ONNX frontend refused a node for a rank it could not know (Silero
    VAD's convolutions over its ['batch', 'sequence'] audio) and the model has open axes beside the
    batch: fixed to the data's sizes (`--input-shape`), the ranks follow; "" otherwise."""
    if "rank has to be known" not in refusal and "rank().is_static()" not in refusal:
        return ""
    open_inputs = [t for t in spec.inputs if t.open_axes]
    if not open_inputs:
        return ""
    axes = "; ".join(f"{t.name}: {', '.join(t.open_axes)}" for t in open_inputs)
    shapes = " ".join(f"--input-shape {t.name}:{','.join(map(str, t.concrete_shape()))}" for t in open_inputs)
    return (
        f"; OpenVINO needs every tensor's rank, which here follows from the open axes of the inputs "
        f"({axes}): make the artifact with them fixed, e.g. `edgekit compress MODEL {shapes}`, "
        "and build from that"
    )


QUANTIZED_OPS = (  # the ONNX and ONNX Runtime ops that only a quantized model holds
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "DynamicQuantizeLSTM",
    "QGemm",
    "QAttention",
)


def quantization(onnx_path: Path) -> dict[str, int]:
    """The quantized ops an ONNX model already holds, by op type: Q/DQ nodes, QLinear* kernels, or
    ORT's dynamic quantization's (ConvInteger, DynamicQuantizeLSTM: ddddocr ships such a model)."""
    from collections import Counter

    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return dict(
        Counter(
            n.op_type for n in graph.node if n.op_type in QUANTIZED_OPS or n.op_type.startswith("QLinear")
        )
    )


def has_quantization(onnx_path: Path) -> bool:
    """Whether an ONNX model is already quantized (NNCF and edgekit's INT8 start from an fp32 model)."""
    return bool(quantization(onnx_path))


def predict(path: Path, samples, fixed: int | None, precision: str) -> list[np.ndarray]:
    """Outputs of the IR compiled for CPU at PRECISION (its OpenVINO name, e.g. "bf16") on SAMPLES
    (in batches of FIXED, for a model whose batch is fixed)."""
    from edgekit.runtimes import ov as ov_runtime

    sess = ov_runtime.load(str(path), "cpu", ov_runtime.Options(precision=precision))
    return samples.outputs(sess.run, fixed, f"evaluating the IR ({precision})")
