"""`compress` and `export`: load -> export (verified) -> passes -> measured -> artifact; `build`:
an ONNX artifact -> an engine for a target runtime (OpenVINO IR, TensorRT plan), verified against it.

A failure anywhere leaves no output directory and never touches the input.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.artifact import (
    LoadRecord,
    Manifest,
    PassRecord,
    check_output_dir,
    existing_paths,
    staging,
    write_manifest,
)
from edgekit.benchmarks.metrics import fidelity
from edgekit.benchmarks.runner import score
from edgekit.compress.finetune import FinetuneConfig
from edgekit.compress.mixed import BudgetNotMet, MixedConfig
from edgekit.compress.precision import Fp16Config, bf16_unsupported
from edgekit.compress.prune import PruneConfig
from edgekit.compress.quantize import Int8Config, for_cpu, quantize_int8
from edgekit.compress.sparsity import SparsityConfig
from edgekit.data import Preprocess, Samples, check_labels, load_samples, split_holdout
from edgekit.errors import EdgekitError, first_line
from edgekit.export import onnx as onnx_export
from edgekit.model import LoadedModel, LoadOptions, example_inputs, load_model, run_torch
from edgekit.runtimes import ort
from edgekit.target_cpu import CANNOT_SATURATE, FORMS, TargetCpu, resolve
from edgekit.target_cpu import here as this_machine

HOLDOUT = 100  # extra calibration samples held out for fidelity when no --eval is given


@dataclass
class CompressRequest:
    model: Path
    out: Path
    load: LoadOptions = field(default_factory=LoadOptions)
    export: onnx_export.ExportConfig = field(default_factory=onnx_export.ExportConfig)
    int8: Int8Config | None = None
    mixed: MixedConfig | None = None  # onnx passes: int8 (budgeted by mixed), or fp16, or bf16
    fp16: Fp16Config | None = None
    bf16: bool = False
    prune: PruneConfig | None = None  # torch passes: prune, then fine-tune, then sparsify
    finetune: FinetuneConfig | None = None
    sparsity: SparsityConfig | None = None
    calib: str | None = None
    eval: str | None = None
    calib_size: int = 300
    eval_size: int | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    force: bool = False
    seed: int = 0
    target: str = "ort"  # the runtime it is for: its operator check runs right after the export
    # the CPU it is for (INT8 form); None: the int8 config's target_cpu, else this machine
    target_cpu: TargetCpu | None = None


def compress(req: CompressRequest) -> Manifest:
    finetune = req.finetune and req.finetune.data
    check_output_dir(req.out, req.force, existing_paths(req.model, req.calib, req.eval, finetune))
    if req.int8 is not None and not req.calib:
        raise EdgekitError(
            "--int8 needs calibration data: --calib DIR|FILE.npz|module:function "
            "(or --calib random, which calibrates on noise and says so)."
        )
    if req.calib_size < 1:
        raise EdgekitError("--calib-size must be at least 1.")
    _check_precision(req)
    if req.finetune is not None and req.prune is None:
        raise EdgekitError(
            "--finetune recovers accuracy after pruning; add --prune RATIO or --prune-macs REDUCTION."
        )
    made_for = None
    if req.int8 is not None and req.target != "tensorrt":  # TensorRT's form is its own, on a GPU
        target = req.target_cpu or resolve(req.int8.target_cpu)
        if req.target_cpu is None and req.int8.target_cpu:
            target = replace(target, source="the int8 config's target_cpu")
        req = replace(req, int8=for_cpu(req.int8, target))
        made_for = _made_for(target, req.int8)
    loaded = _load(req)
    spec = loaded.input_spec
    calib, held_out = _calibration(req, loaded)
    evals = (
        load_samples(req.eval, spec, req.eval_size, req.preprocess, req.seed, "eval")
        if req.eval
        else held_out
    )
    manifest = Manifest(
        model_file=onnx_export.MODEL_FILE,
        source=loaded.source,
        load=LoadRecord(**asdict(req.load)),
        input_spec=spec,
        data={k: v.description for k, v in (("calibration", calib), ("evaluation", evals)) if v is not None},
        target_cpu=made_for,
    )
    loaded, unpruned = _torch_passes(req, loaded, calib, evals, manifest)
    with staging(req.out, req.force) as out, tempfile.TemporaryDirectory(prefix="edgekit-") as work:
        fp32_dir = Path(work) if req.int8 or req.fp16 else out
        fp32 = _export(req, loaded, calib, fp32_dir, manifest)
        _labels_fit(fp32, evals, spec.fixed_batch)
        if req.target != "ort":  # ORT already ran the model in the export check
            from edgekit.export.check import fail_fast

            fail_fast(fp32, req.target)
        missed = None
        if req.int8 is not None:
            missed = (_mixed if req.mixed else _int8)(req, fp32, calib, evals, out, manifest, spec)
            _final_vs_unpruned(req, unpruned, out / onnx_export.MODEL_FILE, evals, manifest)
        if req.fp16 is not None or req.bf16:
            _reduced_precision(req, fp32, calib, evals, out, manifest)
        manifest = write_manifest(out, manifest)
    if missed:  # the best configuration found is written; the missed budget is reported after
        raise missed
    return manifest


def _load(req: CompressRequest) -> LoadedModel:
    """The user's model; an ONNX file is checked in ONNX Runtime first, so an op it cannot run is
    named now (not a traceback after calibration), and one already quantized is refused for INT8."""
    from edgekit.export.check import fail_fast
    from edgekit.export.openvino import has_quantization

    loaded = load_model(req.model, req.load)
    if loaded.is_onnx:
        fail_fast(loaded.onnx_path, "ort")
        if req.int8 is not None and has_quantization(loaded.onnx_path):
            raise EdgekitError(
                f"{req.model} is already quantized (it holds QuantizeLinear/DequantizeLinear nodes); "
                "INT8 quantization starts from the fp32 model."
            )
    return loaded


def _made_for(target: TargetCpu, cfg: Int8Config) -> dict:
    """The manifest's target_cpu: the class, where it came from, the form and why; and, where this
    machine is of another class, that the verification numbers were measured here."""
    record = {**target.record(), "form": cfg.form or "custom", "form_means": FORMS.get(cfg.form, ("",))[0]}
    here = this_machine()
    if here.cpu_class != target.cpu_class:
        record["verified_on"] = here.cpu_class
        record["note"] = (
            f"the int8 check ran on this machine ({here.cpu_class}), not on {target.cpu_class}"
            + (
                "; this form cannot saturate, so its numbers hold there"
                if cfg.form in CANNOT_SATURATE
                else ""
            )
        )
    return record


def _torch_passes(req: CompressRequest, loaded: LoadedModel, calib, evals, manifest) -> tuple:
    """Prune (then fine-tune) and sparsify the torch module before the export. Returns the model to
    export, re-exported from its pruned eager form, and the unpruned model's outputs on EVALS."""
    if req.prune is None and req.sparsity is None:
        return loaded, None
    if loaded.is_onnx:
        raise EdgekitError("--prune and --sparsity work on PyTorch models, not on an ONNX file.")
    import copy

    import torch

    from edgekit.compress import finetune, prune, sparsity

    spec = loaded.input_spec
    module = prune.eager_module(loaded.module, req.load.arch, "--prune" if req.prune else "--sparsity")
    unpruned = copy.deepcopy(module)
    example = tuple(torch.from_numpy(v) for v in example_inputs(spec, batch=1).values())
    data = None
    if req.finetune is not None:
        ft = req.finetune
        data = load_samples(ft.data, spec, ft.size, req.preprocess, req.seed, "finetune")
        manifest.data["finetune"] = data.description
    if req.prune is not None:
        t0 = time.perf_counter()
        summary = prune.prune(module, example, req.prune, data or calib, spec.names, spec.fixed_batch)
        manifest.passes.append(
            PassRecord(
                name="prune_channels",
                config={"library": "torch-pruning", **asdict(req.prune)},
                seconds=time.perf_counter() - t0,
                summary=summary,
            )
        )
    if data is not None:
        t0 = time.perf_counter()
        summary = finetune.finetune(module, unpruned, data, spec.names, req.finetune, spec.fixed_batch)
        manifest.passes.append(
            PassRecord(
                name="finetune_distill",
                config=asdict(req.finetune),
                seconds=time.perf_counter() - t0,
                summary=summary,
            )
        )
    if req.sparsity is not None:
        t0 = time.perf_counter()
        names = req.prune.ignore_layers if req.prune else []
        keep = prune.classifier_layers(module, example) + prune.ignored_layers(module, names)
        manifest.passes.append(
            PassRecord(
                name="sparsity",
                config=asdict(req.sparsity),
                seconds=time.perf_counter() - t0,
                summary=sparsity.sparsify(module, req.sparsity, keep),
            )
        )
    if evals is None:
        manifest.verification["prune"] = {"data": "none: pass --eval to compare with the unpruned model"}
        return replace(loaded, module=module, program=None), None
    ref = _torch_outputs(unpruned, evals, spec, "evaluating the unpruned model")
    out = _torch_outputs(module, evals, spec, "evaluating the pruned model")
    data = "eval" if req.eval else "held-out calibration samples"
    manifest.verification["prune"] = quality(ref, out, evals, data)
    return replace(loaded, module=module, program=None), ref


def _torch_outputs(module, samples: Samples, spec, label: str) -> list[np.ndarray]:
    return samples.outputs(lambda feeds: run_torch(module, feeds, spec), spec.fixed_batch, label, 64)


def _final_vs_unpruned(req, unpruned: list[np.ndarray] | None, path: Path, evals: Samples, manifest) -> None:
    """The compressed artifact against the unpruned model, where torch passes ran before INT8."""
    if unpruned is not None:
        out = predict(path, evals, manifest.input_spec.fixed_batch, "evaluating against unpruned")
        data = "eval" if req.eval else "held-out calibration samples"
        manifest.verification["prune"]["final_vs_unpruned"] = quality(unpruned, out, evals, data)


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
        sess, n = ort.load(str(path)), len(next(iter(feeds.values())))
        try:
            batching.outputs(sess.run, feeds, loaded.input_spec.fixed_batch, n)
        except Exception as e:
            raise EdgekitError(
                f"{loaded.onnx_path} does not run in ONNX Runtime on inputs of its declared shape "
                f"({first_line(e)}); check --input-shape."
            ) from None
        manifest.verification["export"] = {
            "reference": "none: the input is an ONNX model, checked to run in ONNX Runtime",
            "runtime": "onnxruntime",
            "samples": n,
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
    graph = _graph(path)
    manifest.passes.append(
        PassRecord(
            name="export_onnx",
            # the opset the file has, which the exporter may not have been asked for (its default)
            config={
                "exporter": "torch.onnx.export(dynamo=True)",
                **asdict(req.export),
                "opset": graph["opset"],
            },
            seconds=time.perf_counter() - t0,
            summary=graph,
        )
    )
    return path


def _labels_fit(fp32: Path, evals: Samples | None, fixed: int | None) -> None:
    """Labels the model's classes cannot match fail now, on one sample's output, not as 0 % top-1
    after calibration."""
    if evals is not None and evals.labels is not None:
        check_labels(evals, predict(fp32, evals.take(slice(0, 1)), fixed, "checking the labels")[0])


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


def _check_precision(req: CompressRequest) -> None:
    """One sentence for a contradictory or incomplete precision request, before any work."""
    chosen = [f for f, on in (("--int8", req.int8), ("--fp16", req.fp16), ("--bf16", req.bf16)) if on]
    if len(chosen) > 1:
        raise EdgekitError(
            f"{' and '.join(chosen)} are alternatives, pick one (--int8 --max-accuracy-drop X mixes "
            "INT8 with fp32 layers)."
        )
    if req.mixed and req.int8 is None:
        raise EdgekitError("--max-accuracy-drop budgets INT8 quantization; add --int8.")
    if req.mixed and not req.eval:
        raise EdgekitError(
            "--max-accuracy-drop needs evaluation data to measure the drop on: "
            "--eval DIR|FILE.npz|module:function."
        )
    if (req.fp16 or req.bf16) and not (req.eval or req.calib):
        raise EdgekitError(f"{chosen[0]} is verified against fp32 on real inputs; give --eval or --calib.")
    if req.bf16 and (reason := bf16_unsupported()):
        raise EdgekitError(f"{reason}.")


def _mixed(req, fp32: Path, calib: Samples, evals: Samples, out: Path, manifest, spec) -> BudgetNotMet | None:
    """INT8 with the fewest, then fastest, fp32 layers that keep the drop within the budget; the
    missed budget (the best configuration is still written) is returned, to be raised after."""
    from edgekit.compress.mixed import search
    from edgekit.compress.quantize import summarize

    t0 = time.perf_counter()
    fixed = spec.fixed_batch
    cfg = req.mixed.model_copy(update={"runtime": req.target})
    ref = predict(fp32, evals, fixed, "evaluating fp32")

    def evaluate(path: Path) -> dict:
        return quality(ref, predict(path, evals, fixed, "evaluating a candidate"), evals, "eval")

    path = out / onnx_export.MODEL_FILE
    with tempfile.TemporaryDirectory(prefix="edgekit-mixed-") as work:
        summary, chosen = search(fp32, path, calib, evals, req.int8, cfg, fixed, evaluate, Path(work))
    manifest.passes.append(
        PassRecord(
            name="mixed_precision",
            config={"int8": req.int8.model_dump(), **cfg.model_dump()},
            seconds=time.perf_counter() - t0,
            summary={**summarize(path), **summary, "calibration_samples": len(calib)},
        )
    )
    manifest.verification["int8"] = chosen.quality
    if summary["budget_met"]:
        return None
    kept = ", ".join(chosen.kept) or "no layer"
    return BudgetNotMet(
        f"no INT8 configuration with at most {summary['max_fp32_layers']} fp32 layer(s) met "
        f"--max-accuracy-drop {cfg.max_accuracy_drop:g} (the best drops {chosen.drop:.2f} points, with "
        f"{kept} in fp32); it was written to {req.out}, but the budget is not met."
    )


def _reduced_precision(req, fp32: Path, calib: Samples | None, evals: Samples | None, out: Path, manifest):
    """fp16 ONNX verified in ONNX Runtime, or bf16 compute (the fp32 file) verified in OpenVINO at
    bf16; each against the fp32 model in ONNX Runtime, with pipeline.quality's numbers."""
    from edgekit.compress.precision import convert_fp16
    from edgekit.runtimes import ov

    t0 = time.perf_counter()
    data = evals if evals is not None else calib  # fp16/bf16 calibrate nothing: all of it is unseen
    what = "eval" if req.eval else "calibration samples (fp16 and bf16 use no calibration)"
    fixed = manifest.input_spec.fixed_batch
    ref = predict(fp32, data, fixed, "evaluating fp32")
    if req.fp16 is not None:
        path = out / onnx_export.MODEL_FILE
        summary = convert_fp16(fp32, path, req.fp16)
        outputs = predict(path, data, fixed, "evaluating fp16")
        name, config, key, runtime = "convert_fp16", req.fp16.model_dump(), "fp16", "onnxruntime (CPU)"
    else:
        sess = ov.load(str(fp32), "cpu", ov.Options(precision="bf16"))
        ran = sess.info()["precision"]
        if ran != "bf16":
            raise EdgekitError(f"OpenVINO was asked for bf16 but compiled the model for {ran} here.")
        outputs = data.outputs(sess.run, fixed, "evaluating bf16")
        manifest.inference_precision = "bf16"
        summary = {"weights": "fp32 (the ONNX file is unchanged)", "inference_precision": "bf16"}
        name, config, key, runtime = "bf16_inference", {}, "bf16", f"openvino (CPU), compiled for {ran}"
    seconds = time.perf_counter() - t0
    manifest.passes.append(PassRecord(name=name, config=config, seconds=seconds, summary=summary))
    manifest.verification[key] = {**quality(ref, outputs, data, what), "runtime": runtime}


def sensitivity(req: CompressRequest) -> dict:
    """`edgekit sensitivity`: the per-layer INT8 table (edgekit.compress.sensitivity) of the
    model's verified fp32 export, on REQ's calibration and evaluation data."""
    from edgekit.compress.sensitivity import table

    if not req.calib or not req.eval:
        raise EdgekitError("sensitivity needs --calib data (to quantize) and --eval data (to measure).")
    loaded = _load(req)
    spec, fixed = loaded.input_spec, loaded.input_spec.fixed_batch
    calib = load_samples(req.calib, spec, req.calib_size, req.preprocess, req.seed, "calib")
    evals = load_samples(req.eval, spec, req.eval_size, req.preprocess, req.seed, "eval")
    manifest = Manifest(model_file=onnx_export.MODEL_FILE, source=loaded.source, input_spec=spec)
    with tempfile.TemporaryDirectory(prefix="edgekit-sensitivity-") as work:
        fp32 = _export(req, loaded, calib, Path(work), manifest)
        ref = predict(fp32, evals, fixed, "evaluating fp32")
        check_labels(evals, ref[0])

        def evaluate(path: Path) -> dict:
            return quality(ref, predict(path, evals, fixed, "evaluating a layer"), evals, "eval")

        cfg = req.int8 or Int8Config()
        cfg = for_cpu(cfg, req.target_cpu or resolve(cfg.target_cpu))
        return table(fp32, Path(work), calib, evals, cfg, fixed, evaluate)


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
    """Outputs of the ONNX model at PATH in ONNX Runtime (CPU) on SAMPLES."""
    return samples.outputs(ort.load(str(path)).run, fixed, label)
