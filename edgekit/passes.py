"""The passes: one table from a pass's name to its function, its typed config, what it accepts and
what it produces. The name is the one in `compress --help`, edgekit.yaml, the manifest and reports.

A chain is a list of steps (name, config): `compress`'s flags (in the order of FLAG_ORDER) and an
edgekit.yaml variant (in the order written) both become one. `check` refuses a chain that cannot
run before anything does; edgekit.pipeline.compress runs it step by step and writes each pass's
record. `python -m edgekit.passes` writes docs/guide/passes.md from the table.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit import batching
from edgekit.build import BuildConfig, BuildRequest, build
from edgekit.compress import model_file
from edgekit.compress.finetune import FinetuneConfig
from edgekit.compress.mixed import BudgetNotMet, MixedConfig
from edgekit.compress.precision import Fp16Config
from edgekit.compress.prune import PruneConfig
from edgekit.compress.quantize import Int8Config
from edgekit.compress.sparsity import SparsityConfig
from edgekit.data import Preprocess, Samples, check_labels, load_samples
from edgekit.errors import EdgekitError, first_line
from edgekit.evaluate import measure_against, predict, quality
from edgekit.export import onnx as onnx_export
from edgekit.model import example_inputs, run_torch

DOC = Path(__file__).resolve().parent.parent / "docs" / "guide" / "passes.md"
TORCH, ONNX, ENGINE = "torch module", "ONNX", "engine"
STAGES = (TORCH, ONNX, ENGINE)  # the order a chain moves through


class Bf16Config(BaseModel):
    """bf16 compute in OpenVINO (the ONNX stays fp32; the artifact records the precision)."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1


@dataclass(frozen=True)
class Step:
    """One pass of a chain: its table name and its config."""

    name: str
    config: Any


@dataclass
class Work:
    """What the steps of one compress chain share: the request, the data, the manifest being
    written, the torch module the torch passes change and the ONNX file the ONNX passes read."""

    req: Any  # edgekit.pipeline.CompressRequest
    loaded: Any  # edgekit.model.LoadedModel
    calib: Samples | None
    evals: Samples | None
    manifest: Any  # edgekit.artifact.Manifest
    out: Path  # the artifact being staged
    work: Path  # temporary files
    tuning: Samples | None = None  # fine-tuning data
    int8: Int8Config | None = None  # the chain's int8 config, which mixed budgets
    module: Any = None  # the eager torch module, once a torch pass asked for it
    unpruned: Any = None  # its copy before the torch passes
    unpruned_outputs: list[np.ndarray] | None = None
    model: Path | None = None  # the current ONNX file, once exported
    fp32: Path | None = None  # the verified fp32 export
    missed: EdgekitError | None = None  # mixed's budget not met: raised once the artifact is written

    @property
    def data(self) -> str:
        return "eval" if self.req.eval else "held-out calibration samples"

    def judge(self, ref: list[np.ndarray], out: list[np.ndarray], samples: Samples, data: str):
        """OUT against REF on SAMPLES as every verification judges it: each output by its kind
        (--output-kind) and by the user's --metric."""
        names, req = self.manifest.output_names, self.req
        return quality(ref, out, samples, data, names, req.output_kinds, req.metric)


@dataclass(frozen=True)
class Pass:
    """A table entry. RUN(work, config) returns the config it ran with (the export's as a dict, with
    the opset written) and its summary; build's RUN makes a new artifact."""

    name: str
    config: type
    accepts: str
    produces: str
    help: str
    run: Callable
    needs: str | None = None  # a pass that must come before it
    excludes: tuple[str, ...] = ()  # passes it cannot share a chain with
    rewrites: bool = False  # writes a new ONNX file in place of the one it reads
    opset: int = 0  # the lowest ONNX opset it writes into: an imported file below is upgraded to it


def _eager(w: Work, name: str):
    """The eager torch module the torch passes change (made from the loaded model on first use)."""
    from edgekit.compress import prune

    if w.module is None:
        w.module = prune.eager_module(w.loaded.module, w.req.load.arch, f"--{name}")
        w.unpruned = copy.deepcopy(w.module)
    return w.module


def _example(w: Work) -> tuple:
    import torch

    return tuple(torch.from_numpy(v) for v in example_inputs(w.loaded.input_spec, batch=1).values())


def run_prune(w: Work, cfg: PruneConfig):
    """Structured channel pruning of the torch module (edgekit.compress.prune)."""
    from edgekit.compress import prune

    spec = w.loaded.input_spec
    module = _eager(w, "prune")
    summary = prune.prune(module, _example(w), cfg, w.tuning or w.calib, spec.names, spec.fixed_batch)
    return cfg, {"library": "torch-pruning", **summary}


def run_finetune(w: Work, cfg: FinetuneConfig):
    """Distillation from the unpruned module on the fine-tuning data (edgekit.compress.finetune)."""
    from edgekit.compress import finetune

    spec = w.loaded.input_spec
    module = _eager(w, "finetune")
    return cfg, finetune.finetune(module, w.unpruned, w.tuning, spec.names, cfg, spec.fixed_batch)


def run_sparsity(w: Work, cfg: SparsityConfig):
    """Zeroed weights in the torch module (edgekit.compress.sparsity); the classifier and the
    layers prune ignores stay dense."""
    from edgekit.compress import prune, sparsity

    module = _eager(w, "sparsity")
    pruned = next((s.config for s in w.req.chain if s.name == "prune"), None)
    names = pruned.ignore_layers if pruned else []
    keep = prune.classifier_layers(module, _example(w)) + prune.ignored_layers(module, names)
    return cfg, sparsity.sparsify(module, cfg, keep)


def _torch_outputs(module, samples: Samples, spec, label: str) -> list[np.ndarray]:
    return samples.outputs(lambda feeds: run_torch(module, feeds, spec), spec.fixed_batch, label, 64)


def _after_torch_passes(w: Work) -> None:
    """The changed module against the unpruned one on the evaluation data, and it as the model to
    export."""
    spec = w.loaded.input_spec
    if w.evals is None:
        w.manifest.verification["prune"] = {"data": "none: pass --eval to compare with the unpruned model"}
    else:
        ref = _torch_outputs(w.unpruned, w.evals, spec, "evaluating the unpruned model")
        out = _torch_outputs(w.module, w.evals, spec, "evaluating the pruned model")
        w.manifest.verification["prune"] = w.judge(ref, out, w.evals, w.data)
        w.unpruned_outputs = ref
    w.loaded = dataclasses.replace(w.loaded, module=w.module, program=None)


def run_export(w: Work, cfg: onnx_export.ExportConfig):
    """The verified fp32 ONNX baseline, from torch (exported) or from an ONNX file (imported as it
    is, checked to run in ONNX Runtime on inputs of its declared shape)."""
    from edgekit.runtimes import ort

    if w.module is not None:
        _after_torch_passes(w)
    rewritten = any(PASSES[s.name].rewrites for s in w.req.chain)
    out_dir = w.work if rewritten else w.out
    loaded, manifest = w.loaded, w.manifest
    feeds, origin = _verify_feeds(loaded, w.calib, cfg.verify_samples)
    if loaded.is_onnx:
        before = _graph(loaded.onnx_path)["opset"]
        opset, needed_by = max(((PASSES[s.name].opset, s.name) for s in w.req.chain), default=(0, ""))
        path = onnx_export.copy_onnx(loaded.onnx_path, out_dir, loaded.input_spec, opset, needed_by)
        sess, n = ort.load(str(path)), len(next(iter(feeds.values())))
        computed: list[tuple[int, ...]] = []

        def run(f):
            out = sess.run(f)
            if not computed:  # the shapes the first run computes, against those the file declares
                computed.extend(o.shape for o in out)
            return out

        try:
            batching.outputs(run, feeds, loaded.input_spec.fixed_batch, n)
        except Exception as e:
            raise EdgekitError(
                f"{loaded.onnx_path} does not run in ONNX Runtime on inputs of its declared shape "
                f"({first_line(e)}); check --input-shape, and --batch-axis for an input whose samples "
                "are not on its first axis."
            ) from None
        manifest.verification["export"] = {
            "reference": "none: the input is an ONNX model, checked to run in ONNX Runtime",
            "runtime": "onnxruntime",
            "samples": n,
            "data": origin,
        }
        manifest.output_names = sess.output_names
        summary = {"imported": "an ONNX file, copied as it is", **_graph(path)}
        cleared = onnx_export.clear_wrong_output_shapes(path, computed)
        if cleared:
            summary["output_shapes_cleared"] = cleared
        if summary["opset"] != before:
            upgraded = f"upgraded by onnx.version_converter ({needed_by} needs opset {opset})"
            summary.update(imported=f"an ONNX file, {upgraded}", opset_before=before)
    else:
        n_out = loaded.n_outputs
        path = onnx_export.export(loaded.module, loaded.input_spec, out_dir, cfg, n_out, loaded.program)
        verification = onnx_export.verify(loaded.module, path, loaded.input_spec, feeds, cfg)
        manifest.verification["export"] = {**verification, "data": origin}
        manifest.output_names = onnx_export.output_names(n_out)
        summary = {"exported": "torch.onnx.export(dynamo=True)", **_graph(path)}
    _labels_fit(path, w.evals, loaded.input_spec.fixed_batch)
    if w.req.target != "ort":  # ORT already ran the model in the export check
        from edgekit.export.check import fail_fast

        fail_fast(path, w.req.target)
    w.model = w.fp32 = path
    # the opset the file has, which the exporter may not have been asked for (its default), and
    # which an imported file may have below the ones the exporter writes
    return {**cfg.model_dump(), "opset": summary["opset"]}, summary


def _labels_fit(fp32: Path, evals: Samples | None, fixed: int | None) -> None:
    """Labels the model's classes cannot match fail now, on one sample's output, not as 0 % top-1
    after calibration."""
    if evals is not None and evals.labels is not None:
        check_labels(evals, predict(fp32, evals.take(slice(0, 1)), fixed, "checking the labels")[0])


def _verify_feeds(loaded, calib: Samples | None, n: int):
    """Up to N samples to check the export on (samples first: `batching` lays them out)."""
    if calib is not None:
        return calib.take(slice(0, n)).inputs, "calibration samples"
    noise = load_samples("random", loaded.input_spec, min(n, 8), Preprocess())
    return noise.inputs, "random inputs (no --calib given)"


def _graph(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        "opset": model_file.default_opset(model) or None,
        "nodes": len(model.graph.node),
    }


def run_int8(w: Work, cfg: Int8Config):
    """Static INT8 QDQ of the ONNX model (edgekit.compress.quantize), measured against fp32."""
    from edgekit.compress import dynamic_lstm
    from edgekit.compress.quantize import nothing_quantized, quantize_int8, summarize

    fixed = w.loaded.input_spec.fixed_batch
    path = w.out / onnx_export.MODEL_FILE
    summary = quantize_int8(w.model, path, w.calib, cfg, fixed, w.req.output_kinds)
    static = bool(summary["quantized_ops"] or cfg.exclude_nodes)  # else only its LSTMs can be INT8
    q = _int8_check(w, path) if static else None
    if summary.get("transformer") and cfg.dynamic_matmul != "never":
        q, choice = _dynamic_or_static(w, cfg, path, q)
        if choice["recipe"].startswith("dynamic"):  # the static model's counts describe another file
            from edgekit.compress import dynamic_matmul

            summary = {**dynamic_matmul.summarize(path), "static_candidate": summary}
        summary["transformer"] = {**summary.get("transformer", {}), "choice": choice}
    if cfg.dynamic_lstm != "never" and dynamic_lstm.count(w.model):
        q, summary["lstm"] = _dynamic_lstm(w, cfg, path, q)
        if summary["lstm"]["recipe"].startswith("dynamic"):
            summary |= summarize(path)
        if q is None:
            raise EdgekitError(nothing_quantized(w.model, summary["lstm"]["why_not_dynamic"]))
    w.manifest.verification["int8"] = q
    _final_vs_unpruned(w, path)
    w.model = path
    return cfg, {**summary, "calibration_samples": len(w.calib)}


def _dynamic_or_static(w: Work, cfg: Int8Config, path: Path, static: dict) -> tuple[dict, dict]:
    """A transformer's static INT8 at PATH against ORT's dynamic MatMul quantization
    (edgekit.compress.dynamic_matmul), timed where the model is made for this machine's CPU, with
    7-bit weights where the target's u8 x s8 products saturate (ORT's dynamic MatMul is u8 x s8 too)."""
    from edgekit.compress import dynamic_matmul

    return dynamic_matmul.consider(
        w.model, path, static, cfg.dynamic_matmul, *_candidate_checks(w), cfg.fused_attention
    )


def _int8_check(w: Work, model: Path) -> dict:
    """MODEL (an INT8 candidate) against fp32 on the evaluation data, as the CPU class it is made for
    computes it where this CPU shows that class (a lesser one: CPUID masked, in a worker; the
    manifest's target_cpu then says so), with its Q/DQ as written where this CPU's fused kernels
    saturate and the target's do not (a greater class, Arm, a GPU: target_cpu.fused_here), else as
    this CPU does."""
    from edgekit import speedup
    from edgekit.benchmarks.fingerprint import host
    from edgekit.benchmarks.runner import outputs_under
    from edgekit.runtimes.ort import Options
    from edgekit.target_cpu import fused_here

    fixed, made = w.loaded.input_spec.fixed_batch, w.manifest.target_cpu
    on = speedup.kernels((made or {}).get("class"))
    out = outputs_under(on.prefix, model, w.evals, fixed) if on and on.prefix else None
    if out is not None and made is not None:
        made.update(
            verified_on=on.cpu_class,
            note=f"the int8 check ran as {on.cpu_class} computes it: on this machine ({host()['cpu_class']}) "
            f"with CPUID showing only {on.cpu_class}'s features (edgekit.cpuid_mask)",
        )
    elif made is not None and not fused_here(made.get("form"), made.get("class")):
        # this CPU's fused kernels would saturate: the Q/DQ computed as written
        out = predict(model, w.evals, fixed, "evaluating int8", Options(graph_optimization="none"))
        made["note"] = (
            f"the int8 check ran on this machine ({host()['cpu_class']}) with the Q/DQ computed as "
            f"written, as {made.get('class')} computes them: this CPU's fused INT8 kernels saturate "
            "where its do not"
        )
    return measure_against(w.model, model, w.evals, fixed, w.data, w.req.output_kinds, w.req.metric, out)


def _candidate_checks(w: Work) -> tuple:
    """(verify, timing, saturates) for a dynamic INT8 candidate: its Quality against fp32; its time
    against another model's (None where the model is not made for this machine's CPU in ORT); and
    whether the target's u8 x s8 pair sums saturate (7-bit weights then)."""
    from edgekit import speedup
    from edgekit.compress.dynamic_matmul import FASTER

    fixed = w.loaded.input_spec.fixed_batch
    made = w.manifest.target_cpu or {}
    # on the target class's kernels: this CPU's, or a lesser class's this CPU shows (cpuid_mask)
    on = speedup.kernels(made.get("class")) if w.req.target == "ort" else None
    data = w.evals if w.evals is not None else w.calib

    def verify(model: Path) -> dict:
        return _int8_check(w, model)

    timing = (lambda a, b: speedup.settled(a, b, data, fixed, "ort", FASTER, on)) if on else None
    return verify, timing, bool(made.get("u8s8_saturates"))


def _dynamic_lstm(w: Work, cfg: Int8Config, path: Path, static: dict | None) -> tuple[dict | None, dict]:
    """The model at PATH with its LSTMs in INT8 (edgekit.compress.dynamic_lstm) where as faithful as
    STATIC (None: nothing else is INT8) and faster here, 7-bit weights where the target saturates."""
    from edgekit.compress import dynamic_lstm

    return dynamic_lstm.consider(path, static, cfg.dynamic_lstm, *_candidate_checks(w))


def run_mixed(w: Work, cfg: MixedConfig):
    """The int8 step with the fewest, then fastest, fp32 layers that keep the drop within the
    budget (edgekit.compress.mixed); a missed budget is kept in WORK, raised after writing."""
    import tempfile

    from edgekit.compress.mixed import search
    from edgekit.compress.quantize import summarize
    from edgekit.compress.sensitivity import check_budgeted, scorer

    fixed = w.loaded.input_spec.fixed_batch
    ref = predict(w.model, w.evals, fixed, "evaluating fp32")
    judge = eval_judge(w)
    check_budgeted(ref, w.evals, judge)
    evaluate = scorer(ref, w.evals, fixed, judge)
    restore = ray_trials(w, w.model, w.int8, ref, judge)

    path = w.out / onnx_export.MODEL_FILE
    with tempfile.TemporaryDirectory(prefix="edgekit-mixed-") as work:
        summary, chosen = search(
            w.model,
            path,
            w.calib,
            w.evals,
            w.int8,
            cfg,
            fixed,
            evaluate,
            Path(work),
            restore,
            w.req.output_kinds,
        )
    w.manifest.verification["int8"] = chosen.quality
    _final_vs_unpruned(w, path)
    w.model = path
    summary = {"int8": w.int8.model_dump(), **summarize(path), **summary, "calibration_samples": len(w.calib)}
    if not summary["budget_met"]:  # the best configuration found is written; the miss raised after
        w.missed = BudgetNotMet(_why_missed(summary, chosen, cfg.max_accuracy_drop, w.req.out))
    return cfg, summary


def _why_missed(summary: dict, chosen, budget: float, out: Path) -> str:
    """Why --max-accuracy-drop was not met, from what the search tried, and what to try."""
    kept = ", ".join(chosen.kept) or "no layer"
    most = max(summary["tried"], key=lambda c: len(c["kept_fp32"]))
    limit = summary["max_fp32_layers"]
    if len(most["kept_fp32"]) > 1:
        why = (
            f"with the {len(most['kept_fp32'])} most sensitive layers in fp32 it still drops "
            f"{most['drop_points']:.2f}: restoring layers does not recover the loss, which is spread over "
            "the model"
        )
    else:
        why = f"at most {limit} layer(s) could stay fp32"
    return (
        f"--max-accuracy-drop {budget:g} is not met: full INT8 drops {summary['full_int8_drop_points']:.2f} "
        f"points, the best configuration found {chosen.drop:.2f} (with {kept} in fp32), and {why}. It was "
        f"written to {out}; try a larger budget or --max-fp32-layers (now {limit}), or more calibration "
        "samples like the evaluation data."
    )


def eval_judge(w: Work):
    """WORK.judge on the evaluation samples, holding only what it needs (names, kinds, metric), so
    it can travel to Ray workers."""
    names, kinds, metric = w.manifest.output_names, w.req.output_kinds, w.req.metric
    return lambda want, out, samples: quality(want, out, samples, "eval", names, kinds, metric)


def ray_trials(w: Work, fp32: Path, int8, ref: list[np.ndarray], judge):
    """The per-layer trials on Ray at the request's --ray-address (edgekit.layer_trials), or None:
    in this process."""
    if w.req.ray_address is None:
        return None
    from edgekit import layer_trials

    fixed = w.loaded.input_spec.fixed_batch

    def restore(layers, idx, prepared):
        return layer_trials.restore_each(
            w.req.ray_address, fp32, w.calib, int8, fixed, w.evals, ref, judge, layers, prepared, idx
        )

    return restore


def _final_vs_unpruned(w: Work, path: Path) -> None:
    """The compressed artifact against the unpruned model, where torch passes ran before INT8."""
    if w.unpruned_outputs is not None:
        out = predict(path, w.evals, w.loaded.input_spec.fixed_batch, "evaluating against unpruned")
        vs = w.judge(w.unpruned_outputs, out, w.evals, w.data)
        w.manifest.verification["prune"]["final_vs_unpruned"] = vs


def _unseen(w: Work) -> tuple[Samples, str]:
    """fp16 and bf16 calibrate nothing: the evaluation data, else all the calibration samples."""
    if w.evals is not None:
        return w.evals, "eval" if w.req.eval else "calibration samples (fp16 and bf16 use no calibration)"
    return w.calib, "calibration samples (fp16 and bf16 use no calibration)"


def run_fp16(w: Work, cfg: Fp16Config):
    """fp16 ONNX (edgekit.compress.precision) verified in ONNX Runtime against fp32."""
    from edgekit.compress.precision import convert_fp16

    data, what = _unseen(w)
    fixed = w.loaded.input_spec.fixed_batch
    ref = predict(w.model, data, fixed, "evaluating fp32")
    path = w.out / onnx_export.MODEL_FILE
    summary = convert_fp16(w.model, path, cfg)
    outputs = predict(path, data, fixed, "evaluating fp16")
    q = w.judge(ref, outputs, data, what)
    w.manifest.verification["fp16"] = {**q, "runtime": "onnxruntime (CPU)"}
    w.model = path
    return cfg, summary


def run_bf16(w: Work, cfg: Bf16Config):
    """bf16 compute (the fp32 file) verified in OpenVINO at bf16 against fp32 in ONNX Runtime."""
    from edgekit.runtimes import ov

    data, what = _unseen(w)
    fixed = w.loaded.input_spec.fixed_batch
    ref = predict(w.model, data, fixed, "evaluating fp32")
    sess = ov.load(str(w.model), "cpu", ov.Options(precision="bf16"))
    ran = sess.info()["precision"]
    if ran != "bf16":
        raise EdgekitError(f"OpenVINO was asked for bf16 but compiled the model for {ran} here.")
    outputs = data.outputs(sess.run, fixed, "evaluating bf16")
    w.manifest.inference_precision = "bf16"
    runtime = f"openvino (CPU), compiled for {ran}"
    q = w.judge(ref, outputs, data, what)
    w.manifest.verification["bf16"] = {**q, "runtime": runtime}
    return cfg, {"weights": "fp32 (the ONNX file is unchanged)", "inference_precision": "bf16"}


def run_build(parent: Path, out: Path, cfg: BuildConfig, **data):
    """An engine (OpenVINO IR, TensorRT plan) from the artifact PARENT, verified against it, as the
    new artifact OUT (edgekit.build); DATA: calib, calib_size, eval, eval_size, force."""
    return build(BuildRequest(parent=parent, out=out, config=cfg, **data))


PASSES: dict[str, Pass] = {
    p.name: p
    for p in (
        Pass("prune", PruneConfig, TORCH, TORCH, "remove channels (structured), by ratio or MACs", run_prune),
        Pass(
            "finetune",
            FinetuneConfig,
            TORCH,
            TORCH,
            "recover accuracy after pruning: distillation from the unpruned model",
            run_finetune,
            needs="prune",
        ),
        Pass("sparsity", SparsityConfig, TORCH, TORCH, "zero weights: a fraction, or 2:4", run_sparsity),
        Pass(
            "export",
            onnx_export.ExportConfig,
            TORCH,
            ONNX,
            "implicit: the verified fp32 ONNX export (an ONNX source is imported as it is)",
            run_export,
        ),
        Pass(
            "int8",
            Int8Config,
            ONNX,
            ONNX,
            "static INT8 post-training quantization (QDQ), in the form for the target CPU",
            run_int8,
            excludes=("fp16", "bf16"),
            rewrites=True,
            opset=13,  # per-channel QuantizeLinear/DequantizeLinear (their `axis`)
        ),
        Pass(
            "mixed",
            MixedConfig,
            ONNX,
            ONNX,
            "int8 with the fewest fp32 layers that keep the accuracy drop within a budget",
            run_mixed,
            needs="int8",
            rewrites=True,
            opset=13,
        ),
        Pass(
            "fp16",
            Fp16Config,
            ONNX,
            ONNX,
            "fp16 ONNX; fp32 inputs/outputs, reductions, softmax, norms",
            run_fp16,
            excludes=("int8", "bf16"),
            rewrites=True,
        ),
        Pass(
            "bf16",
            Bf16Config,
            ONNX,
            ONNX,
            "bf16 compute in OpenVINO on CPUs with AVX-512 BF16/AMX; the ONNX stays fp32",
            run_bf16,
            excludes=("int8", "fp16"),
        ),
        Pass("build", BuildConfig, ONNX, ENGINE, "an OpenVINO IR or TensorRT plan, verified", run_build),
    )
}
FLAG_ORDER = ("prune", "finetune", "sparsity", "int8", "mixed", "fp16", "bf16")  # compress's flags


def from_flags(**configs) -> list[Step]:
    """The chain of `compress`'s pass flags: each given config (None or False: not given), in the
    one order they run from the command line."""
    unknown = set(configs) - set(FLAG_ORDER)
    if unknown:
        raise TypeError(f"not a compress pass: {', '.join(sorted(unknown))}")
    return [Step(name, configs[name]) for name in FLAG_ORDER if configs.get(name)]


def step_config(chain: list[Step], name: str):
    """The config of CHAIN's step NAME, or None."""
    return next((s.config for s in chain if s.name == name), None)


def config(name: str, **fields):
    """PASS's config from FIELDS, validated by its class; a bad value is one EdgekitError sentence."""
    try:
        return PASSES[name].config(**fields)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(k) for k in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "literal_error":
            msg = f"{err['input']!r} is not one of {err['ctx']['expected']}"
        raise EdgekitError(f"{name}{' ' + key if key else ''}: {msg[0].lower()}{msg[1:]}.") from None


def problem(chain: list[Step]) -> str | None:
    """Why CHAIN cannot run as written, naming both steps and the order that works; None if it can."""
    names = [s.name for s in chain]
    for i, b in enumerate(names):
        before = names[:i]
        if "build" in before:
            return f"build must be the last step, and {b} comes after it; write {b} before build"
        if b in before:
            return f"{b} is given twice; give it once"
        entry = PASSES[b]
        stage = STAGES.index(entry.accepts)
        later = next((a for a in before if STAGES.index(PASSES[a].accepts) > stage), None)
        if later:
            return (
                f"{b} works on the {entry.accepts} and cannot run after {later}, which works on the "
                f"{PASSES[later].accepts} the export makes; write {b} before {later}"
            )
        clash = next((a for a in before if a in entry.excludes), None)
        if clash:
            hint = " (mixed after int8 keeps some layers fp32)" if "int8" in (clash, b) else ""
            return f"{clash} and {b} are alternatives, pick one{hint}"
        if entry.needs and entry.needs not in before:
            if entry.needs in names:
                return f"{b} comes before {entry.needs}, which it needs; write {entry.needs} before {b}"
            return f"{b} needs {entry.needs} before it; add {entry.needs} before {b}"
    return None


def check(chain: list[Step]) -> None:
    """Refuse a chain that cannot run (EdgekitError, exit 2) before anything runs."""
    if (why := problem(chain)) is not None:
        raise EdgekitError(f"{why}.")


def _type_name(annotation) -> str:
    """A field's type as the docs show it: `float \\| None`, `l1 \\| l2`, `list[str]`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if typing.get_origin(annotation) is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _fields(cls) -> list[tuple[str, str, str]]:
    """(key, type, default) of a config class, pydantic model or dataclass."""
    rows = []
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            rows.append((f.name, _type_name(hints[f.name]), repr(f.default)))
        return rows
    for key, f in cls.model_fields.items():
        default = "required" if f.is_required() else repr(f.get_default(call_default_factory=True))
        rows.append((key, _type_name(f.annotation), default))
    return rows


def markdown() -> str:
    """docs/guide/passes.md: every pass of the table, what it accepts and produces, its config."""
    lines = [
        "# Passes",
        "",
        "<!-- generated by `python -m edgekit.passes` from edgekit/passes.py; do not edit -->",
        "",
        "Every pass has one name: the `compress` flag, the edgekit.yaml step, the manifest's pass",
        "record and the report use it. `compress` runs its flags in the order below; an edgekit.yaml",
        "variant runs its steps in the order written. A chain is checked before anything runs: a torch",
        "pass after an ONNX one, anything after `build`, alternatives together (`int8`, `fp16`, `bf16`),",
        "or a pass without the one it needs before it (`mixed` after `int8`, `finetune` after `prune`)",
        "is refused (exit 2) with the order that works.",
        "",
        "In edgekit.yaml a step is its name (`- bf16`) or a one-key mapping (`- int8: {calibration:",
        "minmax}`) whose keys are the config's below; `prune: {..., finetune: DATA, epochs, lr}` is",
        "prune followed by finetune, and `sparsity: 2:4` or `sparsity: 0.5` is the pattern or the",
        "amount. `build` is written last in edgekit.yaml (`edgekit build` makes one from an artifact).",
        "Each pass's manifest record is its name, its config with its `version`, seconds and summary.",
        "",
        "| pass | accepts | produces | what |",
        "|---|---|---|---|",
    ]
    for p in PASSES.values():
        needs = f" (after {p.needs})" if p.needs else ""
        lines.append(f"| `{p.name}` | {p.accepts} | {p.produces} | {p.help}{needs} |")
    for p in PASSES.values():
        what = f"{p.help[0].upper()}{p.help[1:]}. Accepts: {p.accepts}; produces: {p.produces}."
        lines += ["", f"## {p.name}", "", what, f"Config `{p.config.__name__}`:", ""]
        lines += ["| key | type | default |", "|---|---|---|"]
        lines += [f"| `{k}` | {t} | `{d}` |" for k, t, d in _fields(p.config)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else DOC
    target.write_text(markdown())
    print(f"wrote {target}")
