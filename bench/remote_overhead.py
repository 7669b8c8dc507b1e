"""Does benchmarking over ssh change the number? The same artifact measured here and on "a device"
that is this machine over loopback ssh, interleaved round by round.

    .venv/bin/python bench/remote_overhead.py [--rounds 6] [--seconds 2] [--threads 2]

Builds a ResNet-18-shaped fp32 ONNX artifact (bench/models.py, random weights, 224×224, batch 1),
starts a throw-away sshd on 127.0.0.1 (tests/sshd.py: needs Debian's openssh-server), then in each
round runs one full worker measurement locally (`edgekit.benchmarks.runner.measure`) and one over
ssh (`measure(..., host=Remote(...))`, this venv's Python as the device's), with the same seconds,
threads and warm-up. Target: the median of the per-round ratios remote / local within 5 % of 1
(the transport is outside the timed region). Writes bench/results/remote_overhead.json and its
section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # tests/sshd.py (after bench/models.py)
from _markdown import BENCHMARKS, cpu_line, write_section
from models import mobilenet_v2, resnet18
from sshd import ALIAS, sshd

from edgekit.benchmarks.runner import BenchConfig, fingerprint, measure
from edgekit.pipeline import CompressRequest, compress
from edgekit.runtimes.remote import Remote, parse_target

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.05
MODELS = {"resnet18": resnet18, "mobilenet_v2": mobilenet_v2}


def build(name: str, work: Path) -> Path:
    """An fp32 ONNX artifact of the model with a fixed 1×3×224×224 input."""
    pt2 = work / f"{name}.pt2"
    torch.export.save(torch.export.export(MODELS[name](), (torch.zeros(1, 3, 224, 224),)), pt2)
    compress(CompressRequest(model=pt2, out=work / f"{name}-fp32"))
    return work / f"{name}-fp32"


def median_ms(artifact: Path, cfg: BenchConfig, host: Remote | None) -> tuple[float, dict]:
    """One full worker measurement (here, or on HOST over ssh): its median latency and record."""
    rec = measure(artifact, cfg, host=host)
    if not rec.get("ok"):
        raise RuntimeError(f"the {rec['host_target']} measurement failed: {rec.get('error')}")
    return rec["latency"]["median_ms"], rec


def rounds(artifact: Path, host: Remote, args) -> dict:
    """Local and remote medians, interleaved (local, remote, local, remote ...), and their ratios."""
    cfg = BenchConfig(runtime="ort", threads=args.threads, warmup=10, seconds=args.seconds, timeout=300)
    local: list[float] = []
    remote: list[float] = []
    copied: list[int] = []
    for r in range(args.rounds):
        local.append(median_ms(artifact, cfg, None)[0])
        ms, rec = median_ms(artifact, cfg, host)
        remote.append(ms)
        copied.append(rec["remote"]["copied_bytes"])
        print(
            f"round {r + 1}/{args.rounds}: local {local[-1]:.3f} ms, remote {remote[-1]:.3f} ms", flush=True
        )
    ratios = [b / a for a, b in zip(local, remote, strict=True)]
    return {
        "round_medians_ms": {"local": local, "remote": remote},
        "medians_ms": {"local": float(np.median(local)), "remote": float(np.median(remote))},
        "remote_over_local": {"median": float(np.median(ratios)), "rounds": ratios},
        "copied_bytes": copied,
    }


def markdown(result: dict, args, cpu: str, elapsed: float) -> str:
    cmd = (
        f".venv/bin/python bench/remote_overhead.py --model {args.model} --rounds {args.rounds} "
        f"--seconds {args.seconds:g} --threads {args.threads}"
    )
    md, ratio = result["medians_ms"], result["remote_over_local"]
    met = "met" if abs(ratio["median"] - 1) <= TARGET else "**NOT met**"
    copied = ", ".join(f"{b / 1e6:.1f} MB" if b else "0" for b in result["copied_bytes"])
    return "\n".join(
        [
            "<!-- remote_overhead:start -->",
            "## Remote benchmarking over ssh vs local",
            "",
            f"`{cmd}` on {cpu}, {time.strftime('%Y-%m-%d')}; onnxruntime {ort.__version__}; "
            f"{elapsed / 60:.1f} min. A {args.model}-shaped fp32 ONNX artifact (random weights, 224×224, "
            f"batch 1), {args.threads} threads. Each round runs one full worker measurement here and one "
            "on this machine over loopback ssh (a throw-away sshd, tests/sshd.py, this venv's Python as "
            f"the device's), each a fresh process timing ≥ {args.seconds:g} s after 10 warm-up runs; the "
            "ratio is the median of the per-round ratios remote / local.",
            "",
            "| model | local ms | remote ms | remote / local (median, min–max) |",
            "|---|---:|---:|---:|",
            f"| {args.model} | {md['local']:.2f} | {md['remote']:.2f} | {ratio['median']:.3f} "
            f"({min(ratio['rounds']):.3f}–{max(ratio['rounds']):.3f}) |",
            "",
            f"Target: remote median within {TARGET:.0%} of local: {met}. Bytes copied to the device per "
            f"round (code, model, inputs; a later round finds them cached): {copied}.",
            "",
            "Round medians, ms, in measurement order:",
            "",
            "- local: " + " ".join(f"{x:.2f}" for x in result["round_medians_ms"]["local"]),
            "- remote: " + " ".join(f"{x:.2f}" for x in result["round_medians_ms"]["remote"]),
            "<!-- remote_overhead:end -->",
        ]
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=sorted(MODELS), default="resnet18")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--markdown", type=Path, default=BENCHMARKS, help="The Markdown file to write the section to."
    )
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "remote_overhead.json")
    args = p.parse_args()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp, sshd(Path(tmp) / "sshd") as server:
        artifact = build(args.model, Path(tmp))
        device = Remote(
            parse_target(ALIAS),
            python=sys.executable,
            cache=str(Path(tmp) / "device-cache"),
            ssh_config=server.client_config,
        )
        result = rounds(artifact, device, args)
    elapsed = time.perf_counter() - started
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": {k: str(v) for k, v in vars(args).items()}, "target": TARGET, "elapsed_s": elapsed}
    args.json.write_text(json.dumps({**payload, **result}, indent=2) + "\n")
    write_section("remote_overhead", markdown(result, args, cpu_line(fingerprint()), elapsed), args.markdown)
    print(json.dumps({**result["medians_ms"], "remote_over_local": result["remote_over_local"]["median"]}))


if __name__ == "__main__":
    main()
