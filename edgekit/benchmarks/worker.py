"""The measurement worker: `python -m edgekit.benchmarks.worker < job.json`.

It runs in a fresh process so peak memory is the model's own and a crashing runtime cannot kill
the run. It imports only numpy and its runtime (never torch unless the runtime is torch), so the
same file runs on a Jetson over ssh. The result is one JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

from edgekit.benchmarks.metrics import latency_stats
from edgekit.runtimes import get as get_runtime


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(job: dict) -> dict:
    rt = get_runtime(job["runtime"])
    baseline = _rss_mb()
    t0 = time.perf_counter()
    options = rt.Options(**job.get("options", {}))
    sess = rt.load(job["model"], job.get("device", "cpu"), options)
    load_s = time.perf_counter() - t0
    after_load = _rss_mb()
    with np.load(job["feeds"]) as z:
        feeds = {k: z[k] for k in z.files}
    batch = len(next(iter(feeds.values())))
    for _ in range(job.get("warmup", 10)):
        sess.run(feeds)
    times: list[float] = []
    runs, seconds = job.get("runs"), job.get("seconds", 3.0)
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        sess.run(feeds)  # returns when the work is done (eager on CUDA synchronises inside run)
        times.append(time.perf_counter() - t)
        if runs is not None:
            if len(times) >= runs:
                break
        elif time.perf_counter() - start >= seconds and len(times) >= job.get("min_runs", 10):
            break
    result = {
        "ok": True,
        "latency": latency_stats(times, batch),
        "load_seconds": load_s,
        "memory_mb": {
            "baseline_rss": baseline,
            "peak_rss_after_load": after_load,
            "peak_rss": _rss_mb(),
        },
        "runtime": sess.info(),
        "batch": batch,
    }
    if job.get("eval_inputs"):
        result["eval_outputs"] = _predict(sess, job["eval_inputs"], job["eval_outputs"], job)
    return result


def _predict(sess, inputs_path: str, out_path: str, job: dict) -> str:
    """Run the evaluation inputs in batches and save every output, for the parent to score."""
    with np.load(inputs_path) as z:
        inputs = {k: z[k] for k in z.files}
    n = len(next(iter(inputs.values())))
    step = job.get("eval_batch", 32)
    chunks: list[list[np.ndarray]] = []
    for i in range(0, n, step):
        chunks.append(sess.run({k: v[i : i + step] for k, v in inputs.items()}))
    np.savez(out_path, *[np.concatenate(parts) for parts in zip(*chunks, strict=True)])
    return out_path


def main() -> None:
    job = json.loads(sys.stdin.read())
    try:
        result = measure(job)
    except Exception as e:  # a failed row, reported with its reason; the parent goes on
        result = {"ok": False, "error": f"{type(e).__name__}: {str(e).strip()[:500]}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
