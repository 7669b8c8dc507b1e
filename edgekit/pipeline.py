"""`compress` and `export`: load -> the chain of passes (edgekit.passes: torch passes, the verified
export, ONNX passes), each measured and recorded -> artifact; `build` (edgekit.build): an ONNX
artifact -> an engine for a target runtime (OpenVINO IR, TensorRT plan), verified against it.

A failure anywhere leaves no output directory and never touches the input.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit import batching, floors, passes, review
from edgekit.artifact import (
    Manifest,
    PassRecord,
    check_output_dir,
    existing_paths,
    staging,
    write_manifest,
)
from edgekit.compress import output_kinds, padding_mask, selection
from edgekit.compress.precision import bf16_unsupported
from edgekit.compress.quantize import Int8Config, for_cpu
from edgekit.data import Preprocess, Samples, check_labels, load_samples, split_holdout, with_examples
from edgekit.errors import EdgekitError
from edgekit.evaluate import predict
from edgekit.export import onnx as onnx_export
from edgekit.model import LoadedModel, LoadOptions, load_model
from edgekit.passes import Step
from edgekit.target_cpu import CANNOT_SATURATE, FORMS, TargetCpu, resolve
from edgekit.target_cpu import here as this_machine
from edgekit.user_code import load_function

HOLDOUT = 100  # extra calibration samples held out for fidelity when no --eval is given


@dataclass
class CompressRequest:
    model: Path
    out: Path
    load: LoadOptions = field(default_factory=LoadOptions)
    export: onnx_export.ExportConfig = field(default_factory=onnx_export.ExportConfig)
    chain: list[Step] = field(default_factory=list)  # the passes, in the order they run (edgekit.passes)
    calib: str | None = None
    eval: str | None = None
    calib_size: int = 300
    eval_size: int | None = None
    preprocess: Preprocess = field(default_factory=Preprocess)
    constants: dict[str, Any] = field(default_factory=dict)  # --calib-const: input name -> value
    force: bool = False
    output_kinds: dict[str, str] = field(default_factory=dict)  # --output-kind: verified as this kind
    metric: str | None = None  # --metric module:function: the user's task metric (edgekit.task_metric)
    seed: int = 0
    target: str = "ort"  # the runtime it is for: its operator check runs right after the export
    # the CPU it is for (INT8 form); None: the int8 config's target_cpu, else this machine
    target_cpu: TargetCpu | None = None
    # the least fidelity each output must keep (edgekit.floors: by kind, `accuracy`, or output name)
    min_fidelity: dict[str, float] = field(default_factory=lambda: dict(floors.DEFAULTS))
    # per-layer trials (--max-accuracy-drop, sensitivity) on Ray: local, auto, HOST:PORT (None: here)
    ray_address: str | None = None


def compress(req: CompressRequest) -> Manifest:
    """Check REQ's chain and inputs, then run the chain in its order (the export where the torch
    passes end), each pass's record written here, not by the pass."""
    passes.check(req.chain)
    if passes.step_config(req.chain, "build") is not None:
        raise EdgekitError("build makes an engine from an artifact: run `edgekit build` on the output.")
    tuning = passes.step_config(req.chain, "finetune")
    inputs = existing_paths(req.model, req.calib, req.eval, tuning and tuning.data)
    check_output_dir(req.out, req.force, inputs)
    _needs(req)
    req, made_for = _for_target_cpu(req)
    loaded = _load(req)
    spec = loaded.input_spec
    calib, held_out = _calibration(req, loaded)
    evals = (
        load_samples(req.eval, spec, req.eval_size, req.preprocess, req.seed, "eval", req.constants)
        if req.eval
        else held_out
    )
    manifest = Manifest(
        model_file=onnx_export.MODEL_FILE,
        source=loaded.source,
        load=req.load,
        input_spec=with_examples(spec, calib or evals),
        data={k: v.description for k, v in (("calibration", calib), ("evaluation", evals)) if v is not None},
        target_cpu=made_for,
    )
    if tuning is not None:
        tuning = load_samples(tuning.data, spec, tuning.size, req.preprocess, req.seed, "finetune")
        manifest.data["finetune"] = tuning.description
    with staging(req.out, req.force) as out, tempfile.TemporaryDirectory(prefix="edgekit-") as work:
        int8 = passes.step_config(req.chain, "int8")
        w = passes.Work(req, loaded, calib, evals, manifest, out, Path(work), tuning=tuning, int8=int8)
        _run_chain(w, _with_export(req))
        below = review.review(w)
        manifest = write_manifest(out, manifest)
    if w.missed:  # the best configuration found is written; the missed budget is reported after
        raise w.missed
    if below:  # so is a model below its fidelity floor
        raise below
    return manifest


def warnings(manifest: Manifest, out: str) -> list[str]:
    """compress's warning lines: checkpoint entries the architecture has no parameter for, a model
    not faster than its fp32 parent, a floor missed on random inputs."""
    from edgekit import speedup

    lines = []
    left_out = manifest.source.left_out
    if left_out:
        shown = ", ".join(left_out[:4]) + (f" and {len(left_out) - 4} more" if len(left_out) > 4 else "")
        lines.append(
            f"{out}: {len(left_out)} entries of the checkpoint are no parameter of --arch and were "
            f"left out ({shown}); every parameter of --arch was loaded."
        )
    for step in floors.JUDGED:
        entry = manifest.verification.get(step)
        if not isinstance(entry, dict):
            continue
        speed = entry.get("speed") or {}
        if speed.get("faster") is False:
            lines.append(speedup.warning(out, step, speed))
        miss = next((r for r in entry.get("floors", []) if not r["met"]), None)
        if miss and floors.on_noise(entry):
            lines.append(
                f"{out} ({step}): output {miss['name']!r} has {floors.shown(miss)} on random inputs, "
                "which say little about real data; verify with --eval DATA."
            )
    return lines


def _for_target_cpu(req: CompressRequest) -> tuple[CompressRequest, dict | None]:
    """REQ with its int8 step in the INT8 form of the CPU it is for (for another runtime than ORT,
    without ORT's own ops; for OpenVINO, in its placement), and the manifest's target_cpu."""
    int8 = passes.step_config(req.chain, "int8")
    if int8 is None:
        return req, None
    if req.target != "ort":  # QAttention, Gelu, QuickGelu: ORT's own ops; its INT8 kernels' speed
        int8 = int8.model_copy(
            update={
                "fused_attention": False,
                "fused_activations": False,
                "narrow_conv3d_fp32": False,
                "pad_conv_channels": False,
            }
        )
    if req.target == "openvino":
        int8 = int8.model_copy(update={"placement": "openvino"})
    made_for = None
    if req.target != "tensorrt":  # TensorRT's form is its own, on a GPU
        target = req.target_cpu or resolve(int8.target_cpu)
        if req.target_cpu is None and int8.target_cpu:
            target = replace(target, source="the int8 config's target_cpu")
        int8 = for_cpu(int8, target)
        made_for = _made_for(target, int8)
    chain = [Step("int8", int8) if s.name == "int8" else s for s in req.chain]
    return replace(req, chain=chain), made_for


def _with_export(req: CompressRequest) -> list[Step]:
    """REQ's chain with the implicit export where the torch passes end; mixed runs as the int8 step
    (it budgets that step's quantization), so int8 is left out beside it."""
    chain = [s for s in req.chain if not (s.name == "int8" and passes.step_config(req.chain, "mixed"))]
    at = next((i for i, s in enumerate(chain) if passes.PASSES[s.name].accepts != passes.TORCH), len(chain))
    return [*chain[:at], Step("export", req.export), *chain[at:]]


def _run_chain(w: passes.Work, chain: list[Step]) -> None:
    """Each step in order, timed, its record appended; a failure names the step and those before it.
    A model whose outputs are sized by the data goes through the passes after the export without
    its selection step, put back at the end (edgekit.compress.selection)."""
    done: list[str] = []
    split = None
    for step in chain:
        t0 = time.perf_counter()
        try:
            config, summary = passes.PASSES[step.name].run(w, step.config)
        except EdgekitError as e:
            after = f" (after {', '.join(done)})" if done else ""
            e.args = (f"{step.name}{after}: {e}", *e.args[1:])
            raise
        dumped = config if isinstance(config, dict) else config.model_dump()
        w.manifest.passes.append(
            PassRecord(name=step.name, config=dumped, seconds=time.perf_counter() - t0, summary=summary)
        )
        done.append(step.name)
        if step.name == "export":
            if step is not chain[-1]:
                split = _without_selection(w)
            # an output whose graph says what it is (a decoded detection, normalized features) judged so
            w.req = replace(w.req, output_kinds=output_kinds.graph_kinds(w.model, w.req.output_kinds))
            padding_mask.annotate(w.model, w.calib, w.evals)  # outputs per token judged where no padding
    if split is not None:
        _selection_back(w, *split)


def _without_selection(w: passes.Work) -> tuple[Path, selection.Split] | None:
    """Where the fp32 model's outputs are sized by the data (NonMaxSuppression ...) or are no
    tensors (ZipMap), W's model becomes the model without that selection, judged on the tensors it
    reads (what a selection reads is "other": SQNR, unless --output-kind says otherwise; what a
    ZipMap reads, and the model's outputs outside the selection, by their kind); the full fp32
    model and the split, for `_selection_back`."""
    head = w.work / "without_selection.onnx"
    split = selection.split(w.model, head)
    if split is None:
        return None
    full = w.model
    w.model = w.fp32 = head
    w.manifest.output_names = split.cut
    own = {k: v for k, v in w.req.output_kinds.items() if k in split.cut}  # those of the outputs: later
    read = [n for n in split.cut if n not in split.outputs and n not in split.made_into]  # by the selection
    kinds = {name: "other" for name in read} | own
    w.req = replace(w.req, output_kinds=kinds)
    return full, split


def _selection_back(w: passes.Work, full: Path, split: selection.Split) -> None:
    """The selection put back after the compressed model, its outputs compared with fp32's per
    sample (as sets: edgekit.compress.selection.compare) into the verification's `selection`."""
    from edgekit.runtimes import ort

    selection.rejoin(full, w.model, w.model, split)
    w.manifest.output_names = split.outputs
    samples = w.evals if w.evals is not None else w.calib
    record: dict = {"ops": split.ops, "judged_on": split.cut, "outputs": {}}
    if samples is not None:
        ref, out = ort.load(str(full)), ort.load(str(w.model))
        fixed = w.loaded.input_spec.fixed_batch
        runs = [(ref.run(f), out.run(f)) for f, _ in batching.batches(samples.inputs, fixed, 1)]
        for k, name in enumerate(split.outputs):
            record["outputs"][name] = selection.compare([r[k] for r, _ in runs], [o[k] for _, o in runs])
        record["samples"] = len(runs)
    w.manifest.verification["selection"] = record


def _needs(req: CompressRequest) -> None:
    """One sentence for a pass without the data it needs, or one this machine cannot run, before
    any work."""
    names = [s.name for s in req.chain]
    if "int8" in names and not req.calib:
        raise EdgekitError(
            "--int8 needs calibration data: --calib DIR|FILE.npz|module:function "
            "(or --calib random, which calibrates on noise and says so)."
        )
    if req.calib_size < 1:
        raise EdgekitError("--calib-size must be at least 1.")
    if "mixed" in names and not req.eval:
        raise EdgekitError(
            "--max-accuracy-drop needs evaluation data to measure the drop on: "
            "--eval DIR|FILE.npz|module:function."
        )
    half = next((n for n in names if n in ("fp16", "bf16")), None)
    if half and not (req.eval or req.calib):
        raise EdgekitError(f"--{half} is verified against fp32 on real inputs; give --eval or --calib.")
    if "bf16" in names and (reason := bf16_unsupported()):
        raise EdgekitError(f"{reason}.")
    if req.metric:
        load_function(req.metric, "--metric")  # importable now, not after calibration


def _load(req: CompressRequest) -> LoadedModel:
    """The user's model; an ONNX file is checked in ONNX Runtime first, so an op it cannot run is
    named now (not a traceback after calibration), and one already quantized is refused for INT8."""
    from edgekit.export.check import fail_fast
    from edgekit.export.openvino import quantization

    loaded = load_model(req.model, req.load)
    torch_steps = [s.name for s in req.chain if passes.PASSES[s.name].accepts == passes.TORCH]
    if loaded.is_onnx and torch_steps:
        verb = "work" if len(torch_steps) > 1 else "works"
        raise EdgekitError(f"{' and '.join(torch_steps)} {verb} on PyTorch models, not on an ONNX file.")
    if loaded.is_onnx:
        fail_fast(loaded.onnx_path, "ort")
        held = quantization(loaded.onnx_path) if passes.step_config(req.chain, "int8") is not None else {}
        if held:
            ops = ", ".join(f"{op} x{n}" for op, n in sorted(held.items(), key=lambda kv: -kv[1]))
            raise EdgekitError(
                f"{req.model} is already quantized (it holds {ops}); INT8 quantization starts from "
                "the fp32 model."
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


def _calibration(req: CompressRequest, loaded: LoadedModel) -> tuple[Samples | None, Samples | None]:
    if not req.calib:
        return None, None
    extra = 0 if req.eval or passes.step_config(req.chain, "int8") is None else HOLDOUT
    samples = load_samples(
        req.calib, loaded.input_spec, req.calib_size + extra, req.preprocess, req.seed, "calib", req.constants
    )
    if extra == 0:
        return samples, None
    return split_holdout(samples, req.calib_size)


def sensitivity(req: CompressRequest) -> dict:
    """`edgekit sensitivity`: the per-layer INT8 table (edgekit.compress.sensitivity) of the
    model's verified fp32 export, on REQ's calibration and evaluation data."""
    from edgekit.compress.sensitivity import check_budgeted, scorer, table

    if not req.calib or not req.eval:
        raise EdgekitError("sensitivity needs --calib data (to quantize) and --eval data (to measure).")
    loaded = _load(req)
    spec, fixed = loaded.input_spec, loaded.input_spec.fixed_batch
    calib = load_samples(req.calib, spec, req.calib_size, req.preprocess, req.seed, "calib", req.constants)
    evals = load_samples(req.eval, spec, req.eval_size, req.preprocess, req.seed, "eval", req.constants)
    manifest = Manifest(model_file=onnx_export.MODEL_FILE, source=loaded.source, input_spec=spec)
    with tempfile.TemporaryDirectory(prefix="edgekit-sensitivity-") as work:
        w = passes.Work(req, loaded, calib, evals, manifest, Path(work), Path(work))
        passes.run_export(w, req.export)
        _without_selection(w)  # outputs sized by the data: judged on what the selection reads
        fp32 = w.fp32
        ref = predict(fp32, evals, fixed, "evaluating fp32")
        check_labels(evals, ref[0])
        judge = passes.eval_judge(w)
        check_budgeted(ref, evals, judge)
        evaluate = scorer(ref, evals, fixed, judge)
        cfg = passes.step_config(req.chain, "int8") or Int8Config()
        cfg = for_cpu(cfg, req.target_cpu or resolve(cfg.target_cpu))
        restore = passes.ray_trials(w, fp32, cfg, ref, judge)
        return table(fp32, Path(work), calib, evals, cfg, fixed, evaluate, restore, w.req.output_kinds)
