"""`edgekit run edgekit.yaml`: build every variant through a content-addressed cache, measure each
target's variants in interleaved rounds, gate the records (re-measuring while a latency gate is
inconclusive, up to its bound), and write results.jsonl and the verdict.

A stage's cache key is the sha256 of its input (the model file and data for the first stage, the
parent artifact's files for a build), its config and the edgekit version: a CI job whose model did
not change skips straight to the benchmark. An entry whose files no longer match their sha256 is
rebuilt, never used.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from edgekit import __version__
from edgekit.artifact import read_manifest, sha256_file, verify_files
from edgekit.benchmarks import gate
from edgekit.benchmarks.results import append_records
from edgekit.config import Config, Target
from edgekit.errors import EdgekitError


def default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "edgekit" / "run"


@dataclasses.dataclass
class RunOptions:
    out: Path
    cache: Path | None = None  # None: default_cache()
    rebuild: bool = False  # --no-cache: build every stage again
    baseline: Path | None = None  # results of the last release, for max_latency_regression


def run(cfg: Config, opts: RunOptions, say: Callable[[str], None] = print) -> dict:
    """Build, measure, gate. Returns {"stages", "records", "results"}; the records are appended to
    OUT/results.jsonl."""
    from edgekit.benchmarks.report import cpu_notes
    from edgekit.benchmarks.results import load_records

    saved = load_records(opts.baseline) if opts.baseline else None
    dirs, stages = build_variants(cfg, Path(opts.cache or default_cache()), opts.rebuild, say)
    evals, reference = _evaluation(cfg, dirs)
    records, results = [], []
    for t in cfg.targets:
        recs, res = _measure_and_gate(cfg, t, dirs, evals, reference, saved, say)
        for note in cpu_notes(recs):  # an INT8 variant made for another CPU class than the target's
            say(f"note: {note}")
        records += recs
        results += res
    results.sort(key=lambda r: cfg.gates.index(r.gate))
    append_records(opts.out, records)
    return {"stages": stages, "records": records, "results": results}


def build_variants(cfg: Config, cache: Path, rebuild: bool, say) -> tuple[dict[str, Path], list[dict]]:
    """Every variant's artifact, stage by stage, from the cache where an intact entry exists."""
    from edgekit import floors
    from edgekit.passes import PASSES
    from edgekit.pipeline import compress

    model = Path(cfg.resolve(cfg.model.path))
    source = {"model": sha256_file(model), "data": _data_identity(cfg)}
    build = PASSES["build"].run
    dirs, stages = {}, []
    for name, passes in cfg.variants.items():
        steps = cfg.chain(name)
        built = [s for s in steps if s.name == "build"]  # the last step, a stage of its own
        torch_onnx = [p for p in passes if p.name != "build"]
        settings = cfg.model_dump(include={"model", "data"}, exclude={"model": {"path"}})
        key = _key("compress", source, settings, [_keyed(p) for p in torch_onnx])
        req = _compress_request(cfg, model, steps[: len(steps) - len(built)])
        try:
            path, status = _stage(
                cache / key, lambda out, r=req: compress(dataclasses.replace(r, out=out)), rebuild
            )
        except floors.FloorNotMet as e:
            raise floors.FloorNotMet(f"variant {name}: {e}") from None
        stages.append(
            {"variant": name, "stage": "compress", "status": status, "key": key, "artifact": str(path)}
        )
        say(f"{name} · compress: {status} ({key[:12]})")
        if status == "cached" and (missed := floors.recorded_miss(read_manifest(path).verification)):
            # as when it was built: written, but below its floor
            raise floors.FloorNotMet(f"variant {name}: {missed}")
        for step in built:
            b = step.config
            parent = [f.model_dump() for f in read_manifest(path).files]
            key = _key("build", parent, source["data"], b.model_dump())
            path, status = _stage(
                cache / key, lambda out, p=path, c=b: build(p, out, c, **_data_args(cfg)), rebuild
            )
            stages.append(
                {"variant": name, "stage": "build", "status": status, "key": key, "artifact": str(path)}
            )
            say(f"{name} · build {b.target}: {status} ({key[:12]})")
        dirs[name] = path
    return dirs, stages


def _keyed(p) -> dict:
    """A pass as its cache key sees it: an int8 pass without a target_cpu is made for the default
    target (this machine, or EDGEKIT_TARGET_CPU), which joins the key so that an artifact made on a
    VNNI machine is not reused on an AVX2 one."""
    from edgekit.target_cpu import resolve

    key = p.model_dump(exclude_none=True)
    if p.name == "int8" and not p.int8.target_cpu:
        key["int8"]["target_cpu"] = resolve().cpu_class
    return key


def _stage(entry: Path, make: Callable[[Path], object], rebuild: bool) -> tuple[Path, str]:
    """Use the cache entry if its files match their sha256, else (re)build it: (path, status)."""
    status = "built"
    if entry.exists() and not rebuild:
        try:
            verify_files(entry, read_manifest(entry))
            return entry, "cached"
        except EdgekitError:
            status = "rebuilt (cache entry corrupt)"
    if entry.exists():
        shutil.rmtree(entry)
    make(entry)
    return entry, status


def _key(*parts) -> str:
    text = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _data_identity(cfg: Config) -> dict:
    """The content of the data sources (files hashed; module:function and random by name)."""
    out = {}
    tuning = [p.prune.finetune for v in cfg.variants.values() for p in v if p.name == "prune"]
    tuning += [p.finetune.data for v in cfg.variants.values() for p in v if p.name == "finetune"]
    sources = {key: getattr(cfg.data, key) for key in ("calibration", "evaluation")}
    sources.update({f"finetune {d}": d for d in tuning if d})
    for key, source in sources.items():
        if source and cfg.is_path(source):
            path = Path(cfg.resolve(source))
            files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            source = [(str(p.relative_to(path)) if path.is_dir() else p.name, sha256_file(p)) for p in files]
        out[key] = source
    return out


def _data_args(cfg: Config) -> dict:
    d = cfg.data
    return {
        "calib": d.calibration and cfg.resolve(d.calibration),
        "calib_size": d.calib_size,
        "eval": d.evaluation and cfg.resolve(d.evaluation),
        "eval_size": d.eval_size,
    }


def _compress_request(cfg: Config, model: Path, steps: list):
    from edgekit import floors
    from edgekit.data import Preprocess
    from edgekit.pipeline import CompressRequest

    pre = cfg.data.preprocess
    load = cfg.model.load_options()
    preprocess = Preprocess(**{**pre.model_dump(), "mean": tuple(pre.mean), "std": tuple(pre.std)})
    return CompressRequest(
        model=model,
        out=model,
        load=load,
        chain=steps,
        preprocess=preprocess,
        constants=cfg.data.constants,
        min_fidelity=floors.from_config(cfg.data.min_fidelity),
        output_kinds=cfg.data.output_kinds,
        metric=cfg.data.metric,
        **_data_args(cfg),
    )


def _evaluation(cfg: Config, dirs: dict[str, Path]):
    """The evaluation samples and the fp32 variant's outputs on them (what fidelity is measured
    against), or (None, None) without data.evaluation."""
    from edgekit.benchmarks.runner import reference_outputs
    from edgekit.data import load_samples, recorded_preprocess

    if not cfg.data.evaluation:
        return None, None
    first = read_manifest(next(iter(dirs.values())))
    source = cfg.resolve(cfg.data.evaluation)
    pre, constants = recorded_preprocess(first), cfg.data.constants
    evals = load_samples(source, first.input_spec, cfg.data.eval_size, pre, 0, "eval", constants)
    fp32 = next((n for n, passes in cfg.variants.items() if not passes), None)
    return evals, (reference_outputs(dirs[fp32], evals) if fp32 else None)


def _measure_and_gate(cfg, t: Target, dirs, evals, reference, saved, say) -> tuple[list[dict], list]:
    """Interleaved rounds of T's variants, then its gates; while a latency gate is inconclusive and
    its `remeasure` bound allows, another batch of rounds is added and the gates decided again."""
    from edgekit.benchmarks.record import record
    from edgekit.benchmarks.runner import summarize

    gates = [g for g in cfg.gates if g.target == t.name]
    per_variant = _rounds(cfg, t, dirs, evals, reference)
    extra = 0
    while True:
        records = [record({**summarize(per_variant[v]), "target": t.name, "variant": v}) for v in t.variants]
        results = gate.evaluate(gates, records, saved, cfg.targets)
        pending = [r for r in results if r.status == "inconclusive" and extra < r.gate.remeasure]
        if not pending:
            return records, results
        extra += 1
        say(f"{t.name}: {', '.join(r.name for r in pending)} inconclusive; re-measuring (batch {extra})")
        for v, more in _rounds(cfg, t, dirs, None, None).items():
            per_variant[v] += more


def target_bench(cfg: Config, t: Target):
    """How target T measures a variant (edgekit.benchmarks.runner.BenchConfig): its runtime, device,
    threads, batch, warm-up and seconds; an eager one loads the source with the config's own arch and
    trust_pickle."""
    from edgekit.benchmarks.runner import BenchConfig

    return BenchConfig(
        runtime=t.runtime,
        device=t.device,
        threads=t.threads,
        batch=t.batch,
        warmup=t.warmup,
        seconds=t.seconds,
        arch=cfg.model.arch,
        trust_pickle=cfg.model.trust_pickle,
        metric=cfg.data.metric,
    )


def _rounds(cfg: Config, t: Target, dirs: dict[str, Path], evals, reference) -> dict[str, list[dict]]:
    """T.rounds rounds of its variants, interleaved, each in a fresh worker (on T's host if any). An
    eager target loads the source with the config's own arch and trust_pickle, never a manifest's."""
    from edgekit.benchmarks.runner import rounds
    from edgekit.runtimes.remote import remotes

    host = remotes(t.host, None, python=t.remote_python)[0] if t.host else None
    bench = target_bench(cfg, t)
    raw = rounds([(dirs[v], bench) for v in t.variants], t.rounds, evals, reference, host, f"{t.name}: ")
    return dict(zip(t.variants, raw, strict=True))
