"""`compress` and `export`: load -> export (verified) -> passes -> measured -> artifact; `build`:
an ONNX artifact -> an engine for a target runtime (OpenVINO IR, TensorRT plan), verified against it.

A failure anywhere leaves no output directory and never touches the input.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgekit.artifact import LoadRecord, Manifest, PassRecord, check_output_dir, staging, write_manifest
from edgekit.benchmarks.metrics import fidelity
from edgekit.benchmarks.runner import score
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Preprocess, Samples, load_samples, split_holdout
from edgekit.errors import EdgekitError, first_line
from edgekit.export import onnx as onnx_export
from edgekit.model import LoadedModel, LoadOptions, example_inputs, load_model
from edgekit.progress import progress
from edgekit.runtimes import ort

HOLDOUT = 100  # extra calibration samples held out for fidelity when no --eval is given


@dataclass
class CompressRequest:
    model: Path
    out: Path
    load: LoadOptions = field(default_factory=LoadOptions)
    export: onnx_export.ExportConfig = field(default_factory=onnx_export.ExportConfig)
    int8: Int8Config | None = None
    calib: str | None = None
    eval: str | None = None
    calib_size: int = 300
    eval_size: int | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    force: bool = False
    seed: int = 0
    target: str = "ort"  # the runtime it is for: its operator check runs right after the export


def compress(req: CompressRequest) -> Manifest:
    check_output_dir(req.out, req.force, [req.model])
    if req.int8 is not None and not req.calib:
        raise EdgekitError(
            "--int8 needs calibration data: --calib DIR|FILE.npz|module:function "
            "(or --calib random, which calibrates on noise and says so)."
        )
    if req.calib_size < 1:
        raise EdgekitError("--calib-size must be at least 1.")
    loaded = load_model(req.model, req.load)
    spec = loaded.input_spec
    calib, held_out = _calibration(req, loaded)
    evals = (
        load_samples(req.eval, spec, req.eval_size, req.preprocess, req.seed, "eval")
        if req.eval
        else held_out
    )
    fixed = spec.fixed_batch
    calib, evals = (_whole_batches(s, fixed) for s in (calib, evals))
    manifest = Manifest(
        model_file=onnx_export.MODEL_FILE,
        source=loaded.source,
        load=LoadRecord(**asdict(req.load)),
        input_spec=spec,
        data={k: v.description for k, v in (("calibration", calib), ("evaluation", evals)) if v is not None},
    )
    with staging(req.out, req.force) as out, tempfile.TemporaryDirectory(prefix="edgekit-") as work:
        fp32_dir = Path(work) if req.int8 else out
        fp32 = _export(req, loaded, calib, fp32_dir, manifest)
        if req.target != "ort":  # ORT already ran the model in the export check
            from edgekit.export.check import fail_fast

            fail_fast(fp32, req.target)
        if req.int8 is not None:
            _int8(req, fp32, calib, evals, out, manifest, spec)
        return write_manifest(out, manifest)


def _whole_batches(samples: Samples | None, fixed: int | None) -> Samples | None:
    """A static-batch model only takes full batches: drop the remainder (it is recorded)."""
    if samples is None or not fixed or len(samples) % fixed == 0:
        return samples
    if len(samples) < fixed:
        raise EdgekitError(f"the model's static batch is {fixed} but only {len(samples)} samples were given.")
    kept = samples.take(slice(0, len(samples) - len(samples) % fixed))
    kept.description = {**samples.description, "count": len(kept)}
    return kept


def _calibration(req: CompressRequest, loaded: LoadedModel) -> tuple[Samples | None, Samples | None]:
    if not req.calib:
        return None, None
    extra = 0 if req.eval or req.int8 is None else HOLDOUT
    samples = load_samples(
        req.calib, loaded.input_spec, req.calib_size + extra, req.preprocess, req.seed, "calib"
    )
    if extra == 0:
        return samples, None
    return split_holdout(samples, req.calib_size)


def _export(req, loaded: LoadedModel, calib, out_dir: Path, manifest: Manifest) -> Path:
    """The verified fp32 ONNX baseline, from torch (exported) or from an ONNX file (copied)."""
    t0 = time.perf_counter()
    feeds, origin = _verify_feeds(loaded, calib, req.export.verify_samples)
    if loaded.is_onnx:
        path = onnx_export.copy_onnx(loaded.onnx_path, out_dir, loaded.input_spec)
        sess = ort.load(str(path))
        try:
            sess.run(feeds)
        except Exception as e:
            raise EdgekitError(
                f"{loaded.onnx_path} does not run in ONNX Runtime on inputs of its declared shape "
                f"({first_line(e)}); check --input-shape."
            ) from None
        manifest.verification["export"] = {
            "reference": "none: the input is an ONNX model, checked to run in ONNX Runtime",
            "runtime": "onnxruntime",
            "samples": len(next(iter(feeds.values()))),
            "data": origin,
        }
        manifest.output_names = sess.output_names
        manifest.passes.append(
            PassRecord(name="import_onnx", seconds=time.perf_counter() - t0, summary=_graph(path))
        )
        return path
    n_out = loaded.n_outputs
    path = onnx_export.export(loaded.module, loaded.input_spec, out_dir, req.export, n_out, loaded.program)
    verification = onnx_export.verify(loaded.module, path, loaded.input_spec, feeds, req.export)
    verification["data"] = origin
    manifest.verification["export"] = verification
    manifest.output_names = onnx_export.output_names(n_out)
    manifest.passes.append(
        PassRecord(
            name="export_onnx",
            config={"exporter": "torch.onnx.export(dynamo=True)", **asdict(req.export)},
            seconds=time.perf_counter() - t0,
            summary=_graph(path),
        )
    )
    return path


def _verify_feeds(loaded: LoadedModel, calib: Samples | None, n: int):
    if calib is not None:
        return {k: v[:n] for k, v in calib.inputs.items()}, "calibration samples"
    return example_inputs(loaded.input_spec, batch=min(n, 8)), "random inputs (no --calib given)"


def _graph(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "nodes": len(model.graph.node),
    }


def _int8(req, fp32: Path, calib: Samples, evals: Samples, out: Path, manifest, spec) -> None:
    t0 = time.perf_counter()
    fixed = spec.fixed_batch
    path = out / onnx_export.MODEL_FILE
    summary = quantize_int8(fp32, path, calib, req.int8, fixed)
    manifest.passes.append(
        PassRecord(
            name="quantize_int8",
            config=req.int8.model_dump(),
            seconds=time.perf_counter() - t0,
            summary={**summary, "calibration_samples": len(calib)},
        )
    )
    manifest.verification["int8"] = measure_against(fp32, path, evals, fixed, req)


def measure_against(parent: Path, child: Path, evals: Samples, fixed: int | None, req) -> dict:
    """Accuracy (with labels) or fidelity of `child` against `parent`, on the evaluation data."""
    ref = predict(parent, evals, fixed, "evaluating fp32")
    out = predict(child, evals, fixed, "evaluating int8")
    return quality(ref, out, evals, "eval" if req.eval else "held-out calibration samples")


def quality(ref: list[np.ndarray], out: list[np.ndarray], evals: Samples, data: str) -> dict:
    """Fidelity of OUT to REF on EVALS, and both top-1s (and the drop) where EVALS has labels."""
    result = {"data": data, "samples": len(evals), "fidelity": fidelity(ref, out)}
    if evals.description.get("source") == "random":
        result["data"] = "random inputs: fidelity on noise, not on real data"
    parent_acc, child_acc = score(ref, evals), score(out, evals)
    if "top1" in parent_acc:
        result.update(
            metric="top1 accuracy",
            parent_top1=parent_acc["top1"],
            top1=child_acc["top1"],
            parent_top5=parent_acc["top5"],
            top5=child_acc["top5"],
            drop_points=100 * (parent_acc["top1"] - child_acc["top1"]),
        )
    else:
        result["metric"] = "fidelity (no labels)"
    return result


def predict(path: Path, samples: Samples, fixed: int | None, label: str) -> list[np.ndarray]:
    sess = ort.load(str(path))
    chunks = []
    step = fixed or 32
    with progress() as bar:
        task = bar.add_task(label, total=len(samples))
        for feeds in samples.batches(step):
            chunks.append(sess.run(feeds))
            bar.advance(task, len(next(iter(feeds.values()))))
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
