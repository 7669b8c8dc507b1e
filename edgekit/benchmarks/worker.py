"""The measurement worker: `python -m edgekit.benchmarks.worker < job.json`.

It runs in a fresh process so peak memory is the model's own and a crashing runtime cannot kill
the run. It imports only numpy and its runtime (never torch unless the runtime is torch), so the
same file runs on a Jetson over ssh. The result is one JSON object on the last line of stdout,
with the fingerprint of the machine it ran on.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.benchmarks import energy, fingerprint
from edgekit.benchmarks.metrics import latency_stats
from edgekit.runtimes import get as get_runtime


class RuntimeMissing(Exception):
    """The job's runtime library does not import in this Python."""


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is no /proc."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    kib = next(int(x.split()[1]) for x in lines if x.startswith(f"{field}:"))
    return kib / 1024.0


def _peak_rss_mb() -> float:
    """This process's high-water mark of resident memory, in MiB. VmHWM where there is /proc:
    ru_maxrss would also count the parent's memory at the fork that started this worker."""
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    """Resident memory now (VmRSS): the high-water mark would include transient peaks of the
    imports. Where there is no /proc, the high-water mark, an upper bound."""
    rss = _status_mb("VmRSS")
    return rss if rss is not None else _peak_rss_mb()


def _gpu_memory(rt, device: str) -> dict:
    """GPU memory of this process where the run is on a GPU: NVML's figure for any runtime, and
    torch's own peak for eager on CUDA; else why there is none."""
    from edgekit.benchmarks import gpu

    if device not in ("cuda", "gpu", "tensorrt"):
        return {"available": False, "reason": f"the run is on {device}"}
    used = gpu.process_memory_mb(os.getpid())
    if used is not None:
        nvml = {"used_mb": used, "used_note": "NVML's figure for this process, sampled after the timed runs"}
    else:
        why = (
            gpu.nvml_unavailable()
            or "NVML lists no GPU memory for this process (in a container it may see other pids)"
        )
        nvml = {"nvml_reason": why}
    if rt.NAME == "eager":
        import torch  # the eager runtime's own library, already imported

        return {"available": True, "peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20, **nvml}
    if used is None:
        return {"available": False, "reason": nvml["nvml_reason"]}
    return {"available": True, **nvml}


def _timed_runs(sess, feeds: dict, job: dict) -> list[float]:
    """Seconds per run: a fixed count, or until a minimum duration (and a minimum count) has passed."""
    times: list[float] = []
    runs, seconds = job.get("runs"), job.get("seconds", 3.0)
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        sess.run(feeds)  # returns when the work is done (eager on CUDA synchronises inside run)
        times.append(time.perf_counter() - t)
        if runs is not None:
            if len(times) >= runs:
                return times
        elif time.perf_counter() - start >= seconds and len(times) >= job.get("min_runs", 10):
            return times


def measure(job: dict) -> dict:
    """Load, warm up, time the runs; memory over the runtime's own baseline, energy around the timed
    runs, the session's info, and outputs on the evaluation inputs when the job has them."""
    rt = get_runtime(job["runtime"])
    device = job.get("device", "cpu")
    if not rt.available():  # imports the runtime's library, so the baseline includes it and nothing else
        raise RuntimeMissing(f"{rt.NAME} is not installed for {sys.executable} ({rt.INSTALL})")
    baseline = _current_rss_mb()
    t0 = time.perf_counter()
    sess = rt.load(job["model"], device, rt.Options(**job.get("options", {})))
    load_s = time.perf_counter() - t0
    load_peak = _peak_rss_mb()
    with np.load(job["feeds"]) as z:
        feeds = {k: z[k] for k in z.files}
    batch = len(next(iter(feeds.values())))
    for _ in range(job.get("warmup", 10)):
        sess.run(feeds)
    meter = energy.Meter(device)
    meter.start()
    times = _timed_runs(sess, feeds, job)
    joules = meter.stop(len(times), batch)
    peak = _peak_rss_mb()
    result = {
        "ok": True,
        "latency": latency_stats(times, batch),
        "load_seconds": load_s,
        "memory_mb": {
            "baseline_rss": baseline,
            "load_peak": load_peak,
            "load_delta": load_peak - baseline,
            "peak_rss": peak,
            "inference_delta": peak - load_peak,
            "model_file_mb": os.path.getsize(job["model"]) / 2**20,
        },
        "gpu_memory": _gpu_memory(rt, device),
        "energy": joules,
        "runtime": sess.info(),
        "batch": batch,
    }
    if job.get("eval_inputs"):
        result["eval_outputs"] = _predict(sess, job["eval_inputs"], job["eval_outputs"], job)
    return result


def _predict(sess, inputs_path: str, out_path: str, job: dict) -> str:
    """Run the evaluation inputs in batches (edgekit.batching's, for the model's fixed batch if
    it has one; each input laid on its own batch axis) and save every output, for the parent to
    score."""
    with np.load(inputs_path) as z:
        inputs = batching.Stacked({k: z[k] for k in z.files}, job.get("eval_axes", {}))
    np.savez(out_path, *batching.outputs(sess.run, inputs, job.get("eval_fixed_batch")))
    return out_path


def main() -> None:
    job = json.loads(sys.stdin.read())
    if job.get("timeout"):  # a worker on a device outlives a killed ssh: SIGALRM ends it
        signal.alarm(int(job["timeout"]) + 1)
    try:
        result = {"ok": True} if job.get("fingerprint") else measure(job)  # fingerprint: the host only
    except Exception as e:  # a failed row, reported with its reason; the parent goes on
        result = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:500]}"}
        if isinstance(e, RuntimeMissing):
            result["missing_runtime"] = job["runtime"]
    result["host"] = fingerprint.host()  # after the timed runs: nvidia-smi runs outside them
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
