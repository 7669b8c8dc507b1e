"""A search candidate's work as Ray tasks: built from its chain on any node, its evaluation outputs
computed shard by shard on any node, timed on its target device against the baseline.

Nothing is assumed shared between nodes: the model file, the calibration samples and the artifacts
travel as bytes through Ray's object store, and each task works in a temporary directory of its own.
Imported only where Ray is: the functions below become tasks in edgekit.search.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.data import Preprocess, Samples
from edgekit.errors import EdgekitError
from edgekit.model import LoadOptions


@dataclass(frozen=True)
class Source:
    """What every build starts from: the model file's bytes and name, how it loads, and the
    calibration and evaluation samples as .npz bytes, as `edgekit run` builds a variant: its own
    check and a mixed chain's drop on the evaluation samples."""

    model_name: str
    model: bytes
    load: LoadOptions
    calib: bytes
    calib_size: int
    output_kinds: dict[str, str] = field(default_factory=dict)
    metric: str | None = None
    evals: bytes = b""


def pack(directory: Path) -> bytes:
    """An artifact directory as tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for p in sorted(Path(directory).iterdir()):
            tar.add(p, arcname=p.name)
    return buf.getvalue()


def unpack(data: bytes, directory: Path) -> Path:
    """Tar bytes from pack() into DIRECTORY (created); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def npz_bytes(samples: Samples) -> bytes:
    """SAMPLES as a .npz edgekit.data reads back as the same samples: each input samples first, as
    its `NAME.batch_axis` 0 says (a state the model batches on axis 1 had been read as batched on
    1 again), a constant (`sr`) as its one value, labels as y."""
    constants = samples.description.get("constants", {})
    arrays = {} if samples.labels is None else {"y": samples.labels}
    for name, values in samples.inputs.items():
        if name in constants:
            arrays[name] = np.asarray(values[0])
        else:
            arrays[name], arrays[f"{name}.batch_axis"] = values, np.int64(0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


@contextlib.contextmanager
def _scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="edgekit-candidate-") as tmp:
        yield Path(tmp)


def build(source: Source, chain: list, target_cpu=None) -> dict:
    """Run compress with CHAIN on SOURCE: {"artifact": tar bytes} or, where the chain cannot run on
    this model, {"error": its sentence}. A model below a floor or an unmet mixed budget is still a
    candidate (the search's constraints judge it), so no floors apply here."""
    from edgekit import floors
    from edgekit.artifact import model_bytes, read_manifest
    from edgekit.pipeline import CompressRequest, compress

    with _scratch() as tmp:
        model = tmp / source.model_name
        model.write_bytes(source.model)
        calib, evals = tmp / "calib.npz", tmp / "eval.npz"
        calib.write_bytes(source.calib)
        evals.write_bytes(source.evals)
        req = CompressRequest(
            model=model,
            out=tmp / "out",
            load=source.load,
            chain=chain,
            # every chain: the export's own check and fp16's run on these, not on random inputs
            calib=str(calib) if source.calib else None,
            calib_size=source.calib_size,
            eval=str(evals) if source.evals else None,
            preprocess=Preprocess(),
            output_kinds=source.output_kinds,
            metric=source.metric,
            min_fidelity=dict(floors.NO_FLOORS),
            target_cpu=target_cpu,
        )
        try:
            compress(req)
        except EdgekitError as e:
            if not (e.exit_code == 1 and req.out.is_dir()):  # a missed budget still wrote its best
                return {"error": str(e)}
        return {"artifact": pack(req.out), "size_bytes": model_bytes(read_manifest(req.out))}


def outputs(artifact: bytes, runtime: str, inputs: dict[str, np.ndarray], threads: int) -> dict:
    """The artifact's outputs on INPUTS (one shard of the evaluation samples) in RUNTIME on this
    node's CPU, in the precision it was verified at, and their names; or the error of a runtime
    that cannot run it (OpenVINO refusing an op): the same on any node, so the candidate failed."""
    from edgekit.artifact import read_manifest
    from edgekit.benchmarks.runner import BenchConfig, target
    from edgekit.runtimes import get

    with _scratch() as tmp:
        directory = unpack(artifact, tmp / "a")
        manifest = read_manifest(directory)
        try:
            rt = get(runtime)
            bench = BenchConfig(
                runtime=runtime, threads=threads, precision=manifest.inference_precision or "f32"
            )
            model, options = target(directory, manifest, rt, bench)
            session = rt.load(model, "cpu", rt.Options(**options))
            shard = Samples(inputs, None)
            outs = shard.outputs(session.run, manifest.input_spec.fixed_batch, f"evaluating in {runtime}")
        except EdgekitError as e:
            return {"error": str(e)}
        return {"outputs": outs, "names": manifest.output_names}


def timed(
    baseline: bytes, candidate: bytes, bench: Any, runtime: str, rounds: int, host: str | None, python: str
) -> dict:
    """The candidate timed against the baseline on the target device, interleaved (B C B C ...), each
    in fresh workers as `edgekit compare` does: both medians, the per-round ratio and its bootstrap
    interval. Runs where the device's Ray resource is held, so never beside another timing."""
    from edgekit.benchmarks.compare import bootstrap_ci
    from edgekit.benchmarks.runner import rounds as measured_rounds
    from edgekit.benchmarks.runner import summarize
    from edgekit.runtimes.remote import remotes

    remote = remotes(host, None, python=python)[0] if host else None
    with _scratch() as tmp:
        base, cand = unpack(baseline, tmp / "baseline"), unpack(candidate, tmp / "candidate")
        pair = [(base, bench), (cand, dataclasses.replace(bench, runtime=runtime))]
        rec_b, rec_c = (summarize(r) for r in measured_rounds(pair, rounds, host=remote))
        shutil.rmtree(tmp / "baseline", ignore_errors=True)
    for rec in (rec_b, rec_c):
        if not rec.get("ok"):
            return {"error": rec.get("error") or rec.get("reason") or "not measured"}
    med_b, med_c = rec_b["latency"]["round_medians_ms"], rec_c["latency"]["round_medians_ms"]
    ratios = [c / b for b, c in zip(med_b, med_c, strict=True)]
    lo, hi = bootstrap_ci(ratios)
    return {
        "median_ms": float(np.median(med_c)),
        "baseline_ms": float(np.median(med_b)),
        "ratio": {"median": float(np.median(ratios)), "ci_low": lo, "ci_high": hi, "confidence": 0.95},
        "rounds": rounds,
        "host": rec_c.get("host"),
    }
