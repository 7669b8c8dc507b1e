"""Run measurements in fresh worker processes and turn them into result records."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import cpuid_mask
from edgekit.artifact import Manifest, model_bytes, read_manifest, sha256_file, verify_files
from edgekit.benchmarks import fingerprint as fingerprints
from edgekit.benchmarks.fingerprint import CPU_FLAGS as CPU_FLAGS  # importable from here, as before
from edgekit.child_env import child_env
from edgekit.data import PADDING, Samples, check_labels
from edgekit.errors import EdgekitError
from edgekit.evaluate import Reference, predict, score
from edgekit.model import example_inputs
from edgekit.progress import progress
from edgekit.runtimes import get as get_runtime
from edgekit.runtimes import remote
from edgekit.runtimes.remote import Remote
from edgekit.target_cpu import emulator, mismatch


@dataclass
class BenchConfig:
    runtime: str = "ort"
    device: str = "cpu"
    threads: int = 0  # 0: the runtime's default
    batch: int = 1
    # the runtime's inference precision; f32: the model's own, no lowering; None: what the artifact
    # was verified at (its manifest's inference_precision), else f32
    precision: str | None = None
    warmup: int = 10
    runs: int | None = None  # a fixed count, or else ...
    seconds: float = 3.0  # ... a minimum duration
    timeout: float = 600.0
    # run the worker as on a CPU of this class (edgekit.target_cpu.emulator: CPUID masked, or qemu
    # user mode): its outputs are that CPU's (INT8 saturation included)
    emulate_cpu: str | None = None
    # how a runtime that runs the source torch model (eager) may load it, as the user allowed on the
    # command line (bench --arch, --trust-pickle) or in edgekit.yaml: never from the manifest
    arch: str | None = None
    trust_pickle: bool = False
    metric: str | None = None  # the user's task metric (--metric, data.metric), scored here, not on a device


def _worker(job: dict, timeout: float, prefix: list[str] | None = None) -> dict:
    """Run one job in a fresh `python -m edgekit.benchmarks.worker` (under PREFIX, an emulator,
    when given); a crash is a failed row."""
    try:
        proc = subprocess.run(
            [*(prefix or []), sys.executable, "-m", "edgekit.benchmarks.worker"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout:g} s"}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return {"ok": False, "error": f"worker died (exit {proc.returncode}): {tail[:300]}"}
    return json.loads(lines[-1])


def _eval_job(job: dict, samples: Samples, directory: Path, fixed: int | None) -> None:
    """Add SAMPLES to JOB as the worker's evaluation inputs, written in DIRECTORY, with each input's
    batch axis (an .npz keeps the arrays only: a state batched on its second axis, or a constant,
    was fed samples-first)."""
    inputs, outputs = directory / "eval_in.npz", directory / "eval_out.npz"
    np.savez(inputs, **samples.inputs)
    axes = getattr(samples.inputs, "axes", {})
    job.update(eval_inputs=str(inputs), eval_outputs=str(outputs), eval_fixed_batch=fixed, eval_axes=axes)


def outputs_under(prefix: list[str], path: Path, samples: Samples, fixed: int | None) -> list[np.ndarray]:
    """The outputs of the ONNX model at PATH in ONNX Runtime on SAMPLES, computed by a worker started
    under PREFIX (edgekit.cpuid_mask's): as the CPU class it shows computes them."""
    from edgekit import batching

    first, *_ = batching.batches(samples.take(slice(0, fixed or 1)).inputs, fixed, 1)
    with tempfile.TemporaryDirectory(prefix="edgekit-check-") as tmp:
        feeds = Path(tmp) / "feeds.npz"
        np.savez(feeds, **first[0])
        job = {"runtime": "ort", "model": str(path), "warmup": 0, "runs": 1, "feeds": str(feeds)}
        _eval_job(job, samples, Path(tmp), fixed)
        result = _worker(job, 3600, prefix)
        if not result.get("ok"):
            raise EdgekitError(f"the INT8 check on the target CPU's kernels failed: {result.get('error')}")
        with np.load(result["eval_outputs"]) as z:
            return [z[k] for k in z.files]


def measure(
    directory: Path,
    cfg: BenchConfig,
    eval_samples: Samples | None = None,
    reference: Reference | None = None,
    host: Remote | None = None,
) -> dict:
    """One result record for (artifact, runtime, device, precision, host): measured here, or on
    HOST over ssh, where the runtime need not be installed here."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    rt = get_runtime(cfg.runtime) if host else runtime(cfg.runtime)
    cfg = dataclasses.replace(cfg, precision=cfg.precision or manifest.inference_precision or "f32")
    spec = manifest.input_spec
    fixed = spec.fixed_batch
    batch = fixed or cfg.batch
    head = {
        "artifact": str(directory),
        "runtime": rt.NAME,
        "device": cfg.device,
        "precision": cfg.precision,
        "batch": batch,
        "host_target": str(host.target) if host else "local",
    }
    reason = remote.not_applicable(rt) if host else rt.unsupported(cfg.device)
    reason = reason or not_applicable(rt, manifest, cfg)
    if reason:
        where = {"target": str(host.target)} if host else fingerprint()
        return {**head, "ok": False, "not_applicable": True, "reason": reason, "host": where}
    model, options = target(directory, manifest, rt, cfg)
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        feeds_path = Path(tmp) / "feeds.npz"
        np.savez(feeds_path, **example_inputs(spec, batch=batch))
        job = {
            "runtime": rt.NAME,
            "model": model,
            "device": cfg.device,
            "options": options,
            "warmup": cfg.warmup,
            "runs": cfg.runs,
            "seconds": cfg.seconds,
            "feeds": str(feeds_path),
        }
        if eval_samples is not None:
            _eval_job(job, eval_samples, Path(tmp), fixed)
        if host:
            result = host.run(job, directory, [(f.name, f.sha256) for f in manifest.files], cfg.timeout)
        elif cfg.emulate_cpu:
            emulation = emulator(cfg.emulate_cpu)
            result = _worker(job, cfg.timeout, emulation.prefix)
        else:
            result = _worker(job, cfg.timeout)
        # the worker's fingerprint of the machine it ran on; where none ran, this one's or the target
        machine = result.get("host") or ({"target": str(host.target)} if host else None)
        if cfg.emulate_cpu:
            machine = machine or fingerprints.host()
            flags = cpuid_mask.shown(machine.get("cpu_flags", []), cfg.emulate_cpu)
            machine = {**machine, "cpu_class": cfg.emulate_cpu, "cpu_flags": flags}
            result["emulated"] = emulation.record()
        record = {
            **head,
            "model_sha256": next((f.sha256 for f in manifest.files if f.name == manifest.model_file), None),
            "size_bytes": model_bytes(manifest),
            "host": fingerprint(result.get("runtime"), machine),
            # the worker's "runtime" is its session info: kept apart so "runtime" stays the name
            **{k: v for k, v in result.items() if k not in ("eval_outputs", "runtime", "host")},
            "runtime_info": result.get("runtime"),
        }
        if result.get("ok") and eval_samples is not None:
            with np.load(result["eval_outputs"]) as z:
                outputs = [z[k] for k in z.files]
            # the padding mask input compress found (compress.padding_mask): judged where it is 1
            masks = {d[PADDING] for d in manifest.data.values() if PADDING in d}
            if len(masks) == 1 and PADDING not in eval_samples.description:
                eval_samples = dataclasses.replace(
                    eval_samples, description={**eval_samples.description, PADDING: masks.pop()}
                )
            record["accuracy"] = score(outputs, eval_samples, reference, cfg.metric, verified_kinds(manifest))
    running = (record["host"] or {}).get("cpu_class")
    made_for = manifest.target_cpu or {}
    note = mismatch(made_for, running, made_for.get("form"))
    if note and cfg.runtime in ("ort", "openvino") and cfg.device == "cpu":
        record["cpu_note"] = note
    return record


def verified_kinds(manifest: Manifest) -> dict[str, str]:
    """Each output's kind as the artifact's own check judged it (its verification: the graph's kinds
    and --output-kind included), by output_N: bench judges it the same way, not by its values alone
    (a transformer's hidden state would read as a sequence of class scores)."""
    kinds: dict[str, str] = {}
    for check in manifest.verification.values():
        fidelity = check.get("fidelity") if isinstance(check, dict) else None
        for key, result in (fidelity or {}).items():
            if isinstance(result, dict) and "kind" in result:
                kinds.setdefault(key, result["kind"])
    return kinds


def runtime(name: str):
    """The runtime module for a --runtime name; one sentence naming the pip extra if it is absent."""
    rt = get_runtime(name)
    if not rt.available():
        raise EdgekitError(f"runtime {name} is not installed here; install it with: {rt.INSTALL}.")
    return rt


def not_applicable(rt, manifest: Manifest, cfg: BenchConfig) -> str | None:
    """Why this runtime cannot run this artifact (a row saying so, not a failure), or None: a
    precision the runtime cannot be asked for, a model file of another format; for a runtime that
    runs the source torch model (eager), a torch source still on disk and unchanged since the export,
    and the user's permission to run its code (--trust-pickle) or import its --arch.
    (Whether the device exists is the runtime's own `unsupported`, asked where the row runs.)"""
    if cfg.precision not in rt.PRECISIONS:
        return (
            f"{rt.NAME} runs a model in its own precision and cannot be asked for {cfg.precision} "
            f"(it takes {', '.join(rt.PRECISIONS)}); make a {cfg.precision} artifact instead"
        )
    if not rt.SOURCE:
        if Path(manifest.model_file).suffix in rt.FORMATS:
            return None
        return (
            f"{rt.NAME} runs {'/'.join(rt.FORMATS)} files and this artifact's model is {manifest.model_file}"
        )
    src = manifest.source
    if src.kind == "onnx":
        return f"{rt.NAME} runs the source torch model, and this artifact's source is an ONNX file"
    if manifest.load is None:
        return "the manifest does not record how its source was loaded; re-export the artifact"
    if not Path(src.path).is_file():
        return f"its source model {src.path} is no longer there"
    if sha256_file(Path(src.path)) != src.sha256:
        return f"its source model {src.path} has changed since the export (sha256 differs)"
    if src.kind == "pickle" and not cfg.trust_pickle:
        return (
            f"its source is a pickled module; pass --trust-pickle to run it eagerly (that runs code "
            f"from {src.path})"
        )
    if src.kind == "state_dict" and not cfg.arch:
        arch = manifest.load.arch or "package.module:factory"
        return (
            f"its source is a state_dict built by --arch {arch}; pass --arch {arch} to run it eagerly "
            f"(that imports {arch.split(':')[0]})"
        )
    return None


def target(directory: Path, manifest: Manifest, rt, cfg: BenchConfig) -> tuple[str, dict]:
    """The file a runtime loads and its options: the artifact's model file, or for a source
    runtime the source model, with the input shapes the export loaded it with and only the trust
    the user gave (cfg.arch, cfg.trust_pickle)."""
    options: dict = {"threads": cfg.threads}
    if len(rt.PRECISIONS) > 1:  # a runtime that can lower the precision is always told which
        options["precision"] = cfg.precision or manifest.inference_precision or "f32"
    if rt.SOURCE:
        load = manifest.load.model_copy(update={"arch": cfg.arch, "trust_pickle": cfg.trust_pickle})
        return manifest.source.path, {**options, "load": load.model_dump(mode="json")}
    return str(Path(directory) / manifest.model_file), options


def is_fp32(manifest: Manifest) -> bool:
    """An artifact no pass has changed numerically: the plain export (or import) of its source."""
    # export_onnx / import_onnx: the name in artifacts made before the pass table (edgekit.passes)
    return all(p.name in ("export", "export_onnx", "import_onnx") for p in manifest.passes)


def references(dirs: list[Path], explicit: Path | None = None) -> dict[Path, Path | None]:
    """The fp32 reference of each artifact: --reference when given, else the first fp32 artifact
    among DIRS exported from the same source file (same sha256), which may be the artifact itself."""
    if explicit is not None:
        manifest = read_manifest(explicit)
        if not is_fp32(manifest):
            passes = ", ".join(p.name for p in manifest.passes)
            raise EdgekitError(f"--reference {explicit} is not an fp32 artifact (its passes: {passes}).")
        return {Path(d): Path(explicit) for d in dirs}
    manifests = {Path(d): read_manifest(d) for d in dirs}
    fp32 = [d for d, m in manifests.items() if is_fp32(m)]
    return {
        d: next((r for r in fp32 if manifests[r].source.sha256 == m.source.sha256), None)
        for d, m in manifests.items()
    }


def reference_outputs(directory: Path, samples: Samples) -> Reference:
    """Run the fp32 reference artifact in ONNX Runtime on CPU, in f32: the outputs every row on
    these samples is compared with (computed here once, not in a timed worker)."""
    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    path = Path(directory) / manifest.model_file
    outputs = predict(
        path, samples, manifest.input_spec.fixed_batch, f"fp32 reference {Path(directory).name}"
    )
    check_labels(samples, outputs[0])  # before any measurement, not after the first
    return Reference(str(directory), outputs, manifest.output_names)


def fingerprint(runtime_info: dict | None = None, host: dict | None = None) -> dict:
    """Where and with what the numbers were measured: HOST, the fingerprint the worker took on the
    machine it ran on (this machine's where no worker ran), and the threads the session used."""
    info = runtime_info or {}
    return {
        **(host or fingerprints.host()),
        "threads_used": info.get("threads"),  # as the session reports it; 0: the runtime's default
        "threads_requested": info.get("threads_requested", info.get("threads")),
    }


def batch_sizes(spec, requested: list[int]) -> tuple[list[int], str | None]:
    """The batch sizes to measure: the requested ones, or a static-batch model's own batch only
    (with a note saying the others were skipped)."""
    fixed = spec.fixed_batch
    if not fixed or requested == [fixed]:
        return requested, None
    asked = ",".join(map(str, requested))
    return [fixed], f"the model has a fixed batch of {fixed}; measured at that batch only, not {asked}"


def rounds(
    variants: list[tuple[Path, BenchConfig]],
    count: int,
    evals: Samples | None = None,
    reference: Reference | None = None,
    host: Remote | None = None,
    label: str = "",
) -> list[list[dict]]:
    """COUNT rounds of A B C ..., each variant in a fresh worker every round, the evaluation in the
    first: each variant's raw per-round records, for summarize() (and for adding rounds later)."""
    out: list[list[dict]] = [[] for _ in variants]
    with progress() as bar:
        task = bar.add_task(f"{label}interleaved rounds", total=count * len(variants))
        for r in range(count):
            for i, (d, cfg) in enumerate(variants):
                bar.update(task, description=f"{label}round {r + 1}/{count}: {Path(d).name} · {cfg.runtime}")
                per_round = dataclasses.replace(cfg, seconds=cfg.seconds / count)
                out[i].append(measure(d, per_round, evals if r == 0 else None, reference, host=host))
                bar.advance(task)
    return out


def summarize(runs: list[dict]) -> dict:
    """One record from a variant's rounds: latency percentiles as medians over rounds with the
    per-round values kept (what confidence intervals and gates use), the highest peak memory of any
    round; a failed round makes the record that failure."""
    broken = next((r for r in runs if not r.get("ok")), None)
    if broken:
        return dict(broken)
    record = dict(next((r for r in runs if "accuracy" in r), runs[0]))
    latency = dict(record["latency"])
    for key, per_round in (
        ("median_ms", "round_medians_ms"),
        ("p90_ms", "round_p90_ms"),
        ("p99_ms", "round_p99_ms"),
    ):
        values = [r["latency"][key] for r in runs]
        latency[key], latency[per_round] = float(np.median(values)), values
    latency["throughput_per_s"] = record["batch"] * 1e3 / latency["median_ms"]
    record["latency"] = latency
    record["rounds"] = len(runs)
    record["memory_mb"] = dict(record["memory_mb"], peak_rss=max(r["memory_mb"]["peak_rss"] for r in runs))
    return record


def interleaved(
    variants: list[tuple[Path, BenchConfig]],
    count: int,
    evals: Samples | None = None,
    reference: Reference | None = None,
):
    """Measure variants (artifact, runtime, precision ...) in alternating rounds (A B A B ...), so
    a burst of machine noise hits all of them alike; one summarize()d record each. Records after the
    first carry `speedup_vs_first`: the per-round speed-ups over the first variant and their median."""
    records = [summarize(r) for r in rounds(variants, count, evals, reference)]
    first = records[0]
    for record in records[1:]:
        if first.get("ok") and record.get("ok"):
            pairs = zip(
                first["latency"]["round_medians_ms"], record["latency"]["round_medians_ms"], strict=True
            )
            ratios = [b / m for b, m in pairs]
            record["speedup_vs_first"] = {"median": float(np.median(ratios)), "rounds": ratios}
    return records
