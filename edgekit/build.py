"""`edgekit build`: an ONNX artifact -> an engine for a target runtime (OpenVINO IR, TensorRT plan),
verified against its parent on the same inputs, written as a new artifact (the parent is untouched).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator

from edgekit.artifact import (
    InputSpec,
    Manifest,
    PassRecord,
    check_output_dir,
    existing_paths,
    read_manifest,
    staging,
    verify_files,
    write_manifest,
)
from edgekit.data import Samples, load_samples, recorded_preprocess
from edgekit.errors import EdgekitError
from edgekit.evaluate import predict, quality
from edgekit.export import openvino
from edgekit.target_cpu import resolve

VERIFY_SAMPLES = 100  # calibration samples used to verify when no --eval is given


class BuildConfig(BaseModel):
    """An engine for a target runtime from an ONNX artifact: the last step of an edgekit.yaml
    variant, and all `edgekit build` runs. workspace and the batch profile are TensorRT's."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    target: Literal["openvino", "tensorrt"]
    precision: Literal["fp32", "fp16", "bf16", "int8"] = "fp32"
    quantizer: Literal["qdq", "nncf"] = "qdq"
    workspace: str = "2G"  # TensorRT's builder workspace limit
    min_batch: PositiveInt | None = None  # TensorRT's optimization profile: None is 1 (or the fixed batch)
    opt_batch: PositiveInt | None = None  # None is min_batch
    max_batch: PositiveInt | None = None  # None is 32 (or the fixed batch)

    @model_validator(mode="after")
    def _fits(self) -> BuildConfig:
        accepted = {"openvino": ("fp32", "fp16", "bf16"), "tensorrt": ("fp32", "fp16", "int8")}[self.target]
        if self.precision not in accepted:
            raise ValueError(f"{self.target} takes precision {', '.join(accepted)}, not {self.precision}")
        if self.quantizer == "nncf" and self.target != "openvino":
            raise ValueError("quantizer nncf is for target openvino")
        trt_only = sorted(self.model_fields_set & {"workspace", "min_batch", "opt_batch", "max_batch"})
        if trt_only and self.target != "tensorrt":
            raise ValueError(f"{', '.join(trt_only)} set TensorRT's build and target is {self.target}")
        from edgekit.export.tensorrt import parse_bytes  # imports no TensorRT

        try:
            parse_bytes(self.workspace)
        except EdgekitError as e:
            raise ValueError(str(e).rstrip(".")) from None
        return self


@dataclass
class BuildRequest:
    parent: Path
    out: Path
    config: BuildConfig
    calib: str | None = None
    calib_size: int = 300
    eval: str | None = None
    eval_size: int | None = None
    force: bool = False


def placement_note(built: Manifest, target: str) -> str | None:
    """The line an OpenVINO build (BUILT: its manifest, which holds its parent's passes) from an
    INT8 artifact whose Q/DQ were placed for ONNX Runtime gets: OpenVINO runs that placement (a
    Q/DQ pair on each layer's output and around the ops ORT has INT8 kernels for), but a HardSwish
    network ran 1.5x fp32's time in it, 0.5x in OpenVINO's."""
    int8 = next((p.config for p in built.passes if p.name == "int8"), None)
    if target != "openvino" or int8 is None or int8.get("placement") == "openvino":
        return None
    return (
        "the parent's INT8 Q/DQ are placed for ONNX Runtime; for OpenVINO, `edgekit compress --int8 "
        "--target openvino` places them on the layers' inputs only, as NNCF does (a HardSwish network: "
        "0.5x fp32's time in OpenVINO instead of 1.5x; see docs/guide/openvino.md)."
    )


def build(req: BuildRequest):
    parent = read_manifest(req.parent)
    verify_files(req.parent, parent)
    onnx_path = Path(req.parent) / parent.model_file
    if onnx_path.suffix != ".onnx":
        raise EdgekitError(
            f"{req.parent} holds {parent.model_file}, not an ONNX model; build from the artifact "
            "`edgekit compress` made."
        )
    check_output_dir(req.out, req.force, existing_paths(req.parent, req.calib, req.eval))
    _preflight(req, onnx_path, parent.input_spec)
    pre = recorded_preprocess(parent)
    spec = parent.input_spec
    calib = load_samples(req.calib, spec, req.calib_size, pre, 0, "calib") if req.calib else None
    evals, data = _verification_data(req, spec, pre, calib)
    manifest = parent.model_copy(deep=True)
    manifest.parent = str(Path(req.parent).absolute())
    if calib is not None:
        manifest.data["build_calibration"] = calib.description
    with staging(req.out, req.force) as out:
        t0 = time.perf_counter()
        if req.config.target == "openvino":
            summary, verification = _openvino(req, onnx_path, out, calib, evals, data)
            manifest.model_file = openvino.MODEL_FILE
            manifest.inference_precision = summary["inference_precision"]
            if "target_cpu" in summary:  # NNCF quantized it here, for that CPU
                manifest.target_cpu = summary.pop("target_cpu")
        else:
            summary, verification = _tensorrt(req, onnx_path, out, spec, evals, data)
            manifest.model_file = "model.plan"
        manifest.passes.append(
            PassRecord(
                name="build",
                config=req.config.model_dump(),
                seconds=time.perf_counter() - t0,
                summary=summary,
            )
        )
        manifest.verification[req.config.target] = verification
        return write_manifest(out, manifest)


def _preflight(req: BuildRequest, onnx_path: Path, spec: InputSpec) -> None:
    """The target's operator check, before calibration or an engine build (minutes) starts."""
    from edgekit.export.check import fail_fast

    if req.config.target == "openvino":
        # fp16 is a weight format here; the CPU computes in f32 (openvino.INFERENCE)
        computes = "bf16" if openvino.INFERENCE[req.config.precision] == "bf16" else "fp32"
        try:
            fail_fast(onnx_path, "openvino", "int8" if openvino.has_quantization(onnx_path) else computes)
        except EdgekitError as e:
            raise EdgekitError(f"{str(e).rstrip('.')}{openvino.open_axes_hint(str(e), spec)}.") from None
    else:
        fail_fast(onnx_path, "tensorrt", req.config.precision)


def _verification_data(req: BuildRequest, spec, pre, calib: Samples | None) -> tuple[Samples, str]:
    """--eval when given, else the first calibration samples, else random inputs (said so)."""
    if req.eval:
        return load_samples(req.eval, spec, req.eval_size, pre, 0, "eval"), "eval"
    if calib is not None:
        n = min(len(calib), VERIFY_SAMPLES)
        return calib.take(slice(0, n)), "calibration samples"
    # random samples as a calibration set of them is drawn: a state's on its batch axis, a scalar's once
    return load_samples("random", spec, 8, pre, 0, "eval"), "random inputs"


def _openvino(req: BuildRequest, onnx_path: Path, out: Path, calib, evals: Samples, data: str):
    cfg = openvino.OpenVINOConfig(precision=req.config.precision, quantizer=req.config.quantizer)
    if cfg.quantizer == "nncf" and openvino.has_quantization(onnx_path):
        raise EdgekitError(
            f"--quantizer nncf quantizes an fp32 model and {req.parent} is already quantized; "
            "build from the fp32 artifact."
        )
    feeds = None if calib is None else calib.inputs
    target = resolve() if cfg.quantizer == "nncf" else None
    fixed = read_manifest(req.parent).input_spec.fixed_batch
    summary = openvino.build_ir(onnx_path, out, cfg, feeds, target, fixed)
    ref = predict(onnx_path, evals, fixed, "parent in ONNX Runtime")
    ir = openvino.predict(out / openvino.MODEL_FILE, evals, fixed, summary["inference_precision"])
    verification = quality(ref, ir, evals, data)
    verification.update(reference="the parent artifact in ONNX Runtime (CPU)", **_openvino_device(summary))
    return summary, verification


def _openvino_device(summary: dict) -> dict:
    """Where the IR was checked: OpenVINO's version, the device and its name, the precision."""
    import openvino as ov

    return {
        "runtime": f"openvino {summary['openvino']}",
        "device": "CPU",
        "device_name": ov.Core().get_property("CPU", "FULL_DEVICE_NAME"),
        "inference_precision": summary["inference_precision"],
    }


def _tensorrt(req: BuildRequest, onnx_path: Path, out: Path, spec, evals: Samples, data: str):
    from edgekit.export import tensorrt
    from edgekit.runtimes import trt

    c = req.config
    cfg = tensorrt.TensorRTConfig(c.precision, c.workspace, c.min_batch, c.opt_batch, c.max_batch)
    summary = tensorrt.build_plan(onnx_path, out, spec, cfg)
    sess = trt.load(str(out / "model.plan"), "cuda")
    plan = evals.outputs(sess.run, spec.fixed_batch, "evaluating the plan")
    ref = predict(onnx_path, evals, spec.fixed_batch, "parent in ONNX Runtime")
    verification = quality(ref, plan, evals, data)
    verification.update(
        reference="the parent artifact in ONNX Runtime (CPU)",
        runtime=f"tensorrt {summary.get('tensorrt')}",
        device=summary.get("gpu"),
    )
    return summary, verification
