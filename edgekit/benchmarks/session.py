"""`edgekit bench`: every (artifact, batch, runtime, precision) row, each measured in a fresh worker,
here or on devices over ssh (one thread per device), with the evaluation data and fp32 references
loaded once before any measurement."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from edgekit.artifact import read_manifest
from edgekit.benchmarks.record import record
from edgekit.benchmarks.runner import BenchConfig, batch_sizes, measure, reference_outputs, references
from edgekit.benchmarks.runner import runtime as check_runtime
from edgekit.errors import EdgekitError
from edgekit.progress import progress

# the fields of a BenchRequest that a BenchConfig has too
CONFIG_KEYS = (
    "device",
    "threads",
    "warmup",
    "runs",
    "seconds",
    "timeout",
    "emulate_cpu",
    "arch",
    "trust_pickle",
    "metric",
)


@dataclass
class BenchRequest:
    """The `bench` command line: comma-separated lists as typed, checked by `bench`."""

    artifacts: list[Path]
    runtime: str = "ort"
    device: str = "cpu"
    precision: str | None = None
    threads: int = 0
    batch: str = "1"
    warmup: int = 10
    runs: int | None = None
    seconds: float = 3.0
    timeout: float = 600.0
    eval_: str | None = None
    eval_size: int | None = None
    reference: Path | None = None
    host: str | None = None
    hosts_file: Path | None = None
    remote_python: str = "python3"
    remote_cache: str | None = None
    ssh_config: Path | None = None
    ssh_options: tuple[str, ...] = ()
    emulate_cpu: str | None = None
    arch: str | None = None
    trust_pickle: bool = False
    metric: str | None = None


def bench(req: BenchRequest) -> tuple[list[dict], list[str]]:
    """Every row's record, in order, and notes for the user (skipped batch sizes, evaluation
    warnings); everything that can be refused is refused before the first measurement."""
    from edgekit.runtimes import get as get_runtime
    from edgekit.runtimes.remote import remotes

    batches = ints(req.batch, "--batch")
    if min(batches) < 1:
        raise EdgekitError(f"--batch {req.batch} must list batch sizes of 1 or more.")
    settings = dict(python=req.remote_python, cache=req.remote_cache, ssh_config=req.ssh_config)
    devices = remotes(req.host, req.hosts_file, ssh_options=tuple(req.ssh_options), **settings)
    cfg = BenchConfig(**{k: getattr(req, k) for k in CONFIG_KEYS})
    if req.emulate_cpu:
        cfg = _emulated(cfg, devices)
    # a device needs the runtime, not this machine: there the name is only checked
    names = [get_runtime(n).NAME for n in _names(req.runtime, "--runtime", "ort")] if devices else None
    names = names or checked_runtimes(req.runtime)
    precisions = _names(req.precision, "--precision", "f32,bf16") if req.precision is not None else [None]
    evals = evaluation(req.artifacts, req.eval_, req.eval_size, req.reference)
    warned = (s.description.get("warning") for s, _ in evals.values())
    notes = [f"--eval: {w}" for w in dict.fromkeys(warned) if w]
    jobs = _jobs(req.artifacts, cfg, names, precisions, batches, notes)
    with progress() as bar:
        if not devices:
            return _rows(jobs, evals, None, bar), notes
        with ThreadPoolExecutor(len(devices)) as pool:  # one thread per device
            per_device = list(pool.map(lambda d: _rows(jobs, evals, d, bar), devices))
    return [r for records in per_device for r in records], notes


def _jobs(artifacts, cfg: BenchConfig, names, precisions, batches: list[int], notes: list[str]) -> list:
    """(artifact, config) of every row: each batch size, runtime and precision; a static-batch model
    at its own batch only (said in NOTES)."""
    jobs = []
    for a in artifacts:
        sizes, note = batch_sizes(read_manifest(a).input_spec, batches)
        if note:
            notes.append(f"{a}: {note}")
        jobs += [
            (a, replace(cfg, runtime=n, batch=b, precision=p))
            for b in sizes
            for n in names
            for p in precisions
        ]
    return jobs


def _emulated(cfg: BenchConfig, devices: list) -> BenchConfig:
    """--emulate-cpu: refused with --host, or where it cannot run here; under qemu a few runs when
    no --runs was given, since its latency means nothing and only the outputs count."""
    from edgekit.target_cpu import emulator

    if devices:
        raise EdgekitError("--emulate-cpu runs here; it cannot be combined with --host or --hosts.")
    if emulator(cfg.emulate_cpu).timing or cfg.runs is not None:  # one sentence now if it cannot run
        return cfg
    return replace(cfg, runs=2, warmup=min(cfg.warmup, 1))


def _rows(jobs: list, evals: dict, device, bar) -> list[dict]:
    """Every job's record, in order, measured here (DEVICE None) or on DEVICE over ssh."""
    label = f"{device.target} · " if device else ""
    task = bar.add_task(f"{label}measuring", total=len(jobs))
    records = []
    for a, c in jobs:
        what = f"{label}{Path(a).name} · {c.runtime} {c.precision or ''} · batch {c.batch}"
        bar.update(task, description=what)
        on = device and replace(device, status=lambda s, w=what: bar.update(task, description=f"{w}: {s}"))
        records.append(record(measure(a, c, *evals.get(Path(a), (None, None)), host=on)))
        bar.advance(task)
    return records


def tables(records: list[dict]) -> None:
    """A table of the records per device."""
    from edgekit.benchmarks.report import bench_table

    for target in dict.fromkeys(r["host_target"] for r in records):
        title = "edgekit bench" if target == "local" else f"edgekit bench on {target}"
        bench_table([r for r in records if r["host_target"] == target], title)


def evaluation(artifacts, eval_: str | None, eval_size: int | None, explicit: Path | None) -> dict:
    """Per artifact: its evaluation samples (with the preprocessing its manifest recorded) and the
    fp32 reference outputs on them, or None where there is no fp32 reference."""
    from edgekit.data import load_samples, recorded_preprocess

    if not eval_:
        if explicit:
            raise EdgekitError("--reference needs --eval: fidelity is measured on evaluation data.")
        return {}
    refs = references([Path(a) for a in artifacts], explicit)
    samples: dict[str, object] = {}
    outputs: dict[tuple, object] = {}
    result = {}
    for a in artifacts:
        m = read_manifest(a)
        pre = recorded_preprocess(m)
        # the same samples for artifacts of one preprocessing and one set of inputs
        key = json.dumps([asdict(pre), m.input_spec.model_dump()], sort_keys=True)
        if key not in samples:
            samples[key] = load_samples(eval_, m.input_spec, eval_size, pre, 0, "eval")
        ref = refs[Path(a)]
        if ref is not None and (ref, key) not in outputs:
            outputs[ref, key] = reference_outputs(ref, samples[key])
        result[Path(a)] = (samples[key], outputs.get((ref, key)))
    return result


def compared(
    artifacts, runtime: str, precision: str | None, cfg: BenchConfig
) -> list[tuple[Path, BenchConfig]]:
    """The two variants `compare` measures: two artifacts, or one on two runtimes or precisions;
    a missing artifact or runtime fails before any measurement."""
    names = checked_runtimes(runtime)
    precisions = _names(precision, "--precision", "f32,bf16") if precision is not None else [None]
    variants = [
        (Path(a), replace(cfg, runtime=n, precision=p)) for a in artifacts for n in names for p in precisions
    ]
    if len(variants) != 2 or sum(len(x) == 2 for x in (artifacts, names, precisions)) != 1:
        raise EdgekitError(
            "compare needs exactly two variants: two artifacts, or one artifact with two --runtime "
            f"names or two --precision values (got {len(artifacts)} artifact(s), runtimes "
            f"{','.join(names)}, precisions {','.join(p or 'default' for p in precisions)})."
        )
    for a in artifacts:
        read_manifest(a)
    return variants


def checked_runtimes(text: str) -> list[str]:
    """The --runtime names; an unknown or absent runtime fails before any measurement."""
    names = _names(text, "--runtime", "ort,openvino")
    for name in names:
        check_runtime(name)
    return names


def _names(text: str, flag: str, example: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise EdgekitError(f"{flag} needs at least one value, e.g. {flag} {example}.")
    return names


def ints(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise EdgekitError(f"{flag} {text!r} must be comma-separated whole numbers, e.g. 1,8,32.") from None
