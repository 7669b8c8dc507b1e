"""Is the compressed model faster than its fp32 parent on the runtime it is for? A short interleaved
timing (batch 1, about a second in all) recorded in the manifest, on the kernels of the CPU class
the model is made for where this CPU can show that class (edgekit.cpuid_mask), else on this CPU's;
a model that is not faster is reported (a warning, exit 0). `edgekit compare` is the measurement to
quote."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.benchmarks.metrics import interleaved_medians
from edgekit.child_env import child_env
from edgekit.data import Samples
from edgekit.errors import EdgekitError

BUDGET_S = 1.0  # timed seconds, both models, all rounds
ROUNDS = 5
RUNTIMES = {  # what measure() takes, as the record names it
    "ort": "ONNX Runtime (CPU)",
    "openvino": "OpenVINO (CPU)",
    "openvino-bf16": "OpenVINO (CPU), bf16 against f32",
}


@dataclass(frozen=True)
class Kernels:
    """Whose kernels a timing runs: CPU_CLASS's, in this process (PREFIX None: this CPU's class) or
    in a process started under PREFIX (edgekit.cpuid_mask's: a lesser class this CPU shows)."""

    cpu_class: str
    prefix: list[str] | None = None


def kernels(target: str | None = None) -> Kernels | None:
    """The kernels of the CPU class TARGET (None: this CPU's) as they can be timed here, or None
    where they cannot: a class above this CPU's, or one it cannot show."""
    from edgekit import cpuid_mask
    from edgekit.benchmarks import fingerprint

    here = fingerprint.host()["cpu_class"]
    if target in (None, here):
        return Kernels(here)
    prefix = cpuid_mask.prefix(target, here)
    return Kernels(target, prefix) if prefix else None


def measure(
    fp32: Path, model: Path, samples: Samples, fixed: int | None, runtime: str, on: Kernels | None = None
) -> dict:
    """{fp32_ms, ms, ratio (ms / fp32_ms), faster, runtime, batch, rounds, runs, kernels}: the
    medians of round medians of FP32 and MODEL on one batch of SAMPLES, in RUNTIME ("ort",
    "openvino" or "openvino-bf16": the same file at f32 and at bf16), alternating A B A B, on the
    kernels ON (default: this CPU's)."""
    on = on or kernels()
    if on.prefix:
        return {**_measured_under(on.prefix, fp32, model, samples, fixed, runtime), "kernels": on.cpu_class}
    return {**_measure(fp32, model, samples, fixed, runtime), "kernels": on.cpu_class}


def _measure(fp32: Path, model: Path, samples: Samples, fixed: int | None, runtime: str) -> dict:
    """`measure` in this process."""
    first, *_ = batching.batches(samples.take(slice(0, fixed or 1)).inputs, fixed, 1)
    feeds = first[0]
    a, b = _sessions(fp32, model, runtime)
    a.run(feeds), b.run(feeds)  # the first run of a session prepares its kernels
    once = [_time(a.run, feeds), _time(b.run, feeds)]
    runs = int(np.clip(BUDGET_S / ROUNDS / 2 / max(max(once), 1e-6), 1, 50))
    medians = interleaved_medians(
        {"fp32": lambda: a.run(feeds), "model": lambda: b.run(feeds)}, ROUNDS, runs, warmup=2
    )
    fp32_ms, ms = float(np.median(medians["fp32"])), float(np.median(medians["model"]))
    return {
        "runtime": RUNTIMES[runtime],
        "batch": fixed or 1,
        "rounds": ROUNDS,
        "runs": runs,
        "fp32_ms": fp32_ms,
        "ms": ms,
        "ratio": ms / fp32_ms,
        "faster": ms < fp32_ms,
    }


def _measured_under(
    prefix: list[str], fp32: Path, model: Path, samples: Samples, fixed: int | None, runtime: str
) -> dict:
    """`measure` in a process started under PREFIX (edgekit.cpuid_mask's), so the kernels timed are
    the ones the class it shows runs, on this machine's cores."""
    first = samples.take(slice(0, fixed or 1))
    with tempfile.TemporaryDirectory(prefix="edgekit-speed-") as tmp:
        np.savez(Path(tmp) / "feeds.npz", **first.inputs)
        job = {"fp32": str(fp32), "model": str(model), "feeds": str(Path(tmp) / "feeds.npz"), "fixed": fixed}
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "edgekit.speedup", json.dumps({**job, "runtime": runtime})],
            capture_output=True,
            text=True,
            timeout=600,
            env=child_env(),
        )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise EdgekitError(f"timing on another CPU class's kernels failed: {tail[:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def settled(
    fp32: Path,
    model: Path,
    samples: Samples,
    fixed: int | None,
    runtime: str,
    below: float,
    on: Kernels | None = None,
) -> dict:
    """`measure`'s record for a choice between two models (is the ratio below BELOW?), from two checks
    where they agree on it, else the median of three: one one-second check on a shared machine can
    flip the choice (CREPE's padded convolution measured 1.10x once, 0.74-0.90x eight times;
    MiniLM's dynamic MatMuls 0.905x and 0.837x against a 0.9 threshold in two runs)."""
    records = [measure(fp32, model, samples, fixed, runtime, on) for _ in range(2)]
    if (records[0]["ratio"] < below) != (records[1]["ratio"] < below):
        records.append(measure(fp32, model, samples, fixed, runtime, on))
    return sorted(records, key=lambda r: r["ratio"])[len(records) // 2]


def _time(fn, feeds) -> float:
    t = time.perf_counter()
    fn(feeds)
    return time.perf_counter() - t


def _sessions(fp32: Path, model: Path, runtime: str):
    if runtime == "ort":
        from edgekit.runtimes import ort

        return ort.load(str(fp32)), ort.load(str(model))
    from edgekit.runtimes import ov

    precision = "bf16" if runtime == "openvino-bf16" else "f32"
    return ov.load(str(fp32), "cpu", ov.Options(precision="f32")), ov.load(
        str(model), "cpu", ov.Options(precision=precision)
    )


def warning(out: str, step: str, record: dict) -> str:
    """The line a model that is not faster than its parent gets; an INT8 model for ONNX Runtime is
    pointed at OpenVINO, whose INT8 kernels cover what ORT's do not (HardSwish; depthwise-separable
    CNNs on an AMX Xeon: docs/guide/quantize.md measures both); timed on another class's kernels
    than this CPU's, the line says whose; on a class without VNNI, that INT8 may not be faster there."""
    from edgekit.benchmarks import fingerprint
    from edgekit.target_cpu import CLASSES

    here = fingerprint.host()["cpu_class"]
    kernels = record.get("kernels", here)
    line = (
        f"{out} ({step}) is not faster than its fp32 parent in {record['runtime']}"
        + (f" on {kernels}'s kernels" if kernels != here else "")
        + ": "
        f"{record['ms']:.3g} ms vs {record['fp32_ms']:.3g} ms at batch {record['batch']} "
        f"({record['ratio']:.2f}x the time; a short check, `edgekit compare` measures it properly)."
    )
    if step == "int8" and kernels in CLASSES and CLASSES[kernels].saturates:
        line += (
            f" Without VNNI ({kernels}) an 8-bit multiply-add may cost what an fp32 one does (on an"
            " AVX2-only EPYC NNCF's INT8 ran 1.0-1.2x fp32's time too); INT8 still makes the weights"
            " 4x smaller."
        )
    if step == "int8" and record["runtime"] == RUNTIMES["ort"]:
        line += (
            " If it runs slower in `edgekit compare` too, try `--target openvino`: OpenVINO has INT8"
            " kernels ORT lacks."
        )
    return line


if __name__ == "__main__":  # _measured_under's process: the job as JSON in argv, the record out
    job = json.loads(sys.argv[1])
    with np.load(job["feeds"]) as z:
        feeds = {k: z[k] for k in z.files}
    print(
        json.dumps(
            _measure(
                Path(job["fp32"]), Path(job["model"]), Samples(feeds, None), job["fixed"], job["runtime"]
            )
        )
    )
