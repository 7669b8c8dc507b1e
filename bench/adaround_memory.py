"""AdaRound's memory on a transformer the size of BERT-base: bytes a weight, and a whole compress's peak.

    .venv/bin/python bench/adaround_memory.py [--blocks 2] [--sequences 200] [--tokens 64]

Two measurements, each in a child process whose peak RSS (the kernel's high-water mark) is read:
- the solve alone (edgekit.compress.adaround._solve, no time budget: all 300 iterations) on BLOCKS of
  BERT-base's weight products (four 768x768 and two 768x3072 a block, random weights, inputs of
  4096 random rows): its peak above the process's size before it, per weight, against
  adaround.BYTES_PER_WEIGHT, the figure the memory limit counts with;
- `edgekit compress --int8` of a randomly initialised BERT-base (`transformers`, legacy exporter,
  opset 17: random weights say nothing of accuracy, only of the cost) calibrated on SEQUENCES random
  sequences of TOKENS tokens: the peak RSS and the int8 pass's AdaRound record.
Writes docs/BENCHMARKS.md (its section) and bench/results/adaround_memory.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _markdown import cpu_line, write_section
from rich.console import Console
from rich.table import Table

from edgekit.benchmarks.fingerprint import host

ROOT = Path(__file__).resolve().parents[1]
BLOCK = [(768, 768)] * 4 + [(768, 3072), (3072, 768)]  # (K, N) of one BERT-base layer's products
console = Console()


def child_solve(blocks: int) -> dict:
    """In this process: the solve on BLOCKS of BERT-base's products; its peak bytes a weight."""
    import torch  # noqa: F401  (its own allocations before the baseline)
    from onnx import helper

    from edgekit.compress import adaround

    rng = np.random.default_rng(0)
    todo, weights = [], 0
    for i, (k, n) in enumerate(BLOCK * blocks):
        gram = adaround.Gram(helper.make_node("Gemm", ["x", f"w{i}"], ["y"], transB=1), 1, k, 0)
        gram.add(rng.standard_normal((4096, k)).astype(np.float32))
        w = (rng.standard_normal((n, k)) * 0.02).astype(np.float32)
        scale = np.abs(w).max(1, keepdims=True) / 127
        q = np.clip(np.round(w / scale), -127, 127).astype(np.int16)
        todo.append((f"w{i}", gram, w, q, scale, np.zeros_like(scale), np.iinfo(np.int8)))
        weights += w.size
    before = _hwm()
    start = time.perf_counter()
    kept, limited = adaround._solve(todo, {})
    seconds = time.perf_counter() - start
    peak = _hwm()
    return {
        "products": len(todo),
        "weights": weights,
        "seconds": seconds,
        "peak_above_start_bytes": peak - before,
        "bytes_per_weight": (peak - before) / weights,
        "counted_bytes_per_weight": adaround.BYTES_PER_WEIGHT,
        "kept_nearest": kept,
        "limited": limited,
    }


def _hwm() -> int:
    """This process's peak RSS since its exec (VmHWM; ru_maxrss also counts its parent's size at the
    fork, so a child of a large process never reads below it)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def child_export(sequences: int, tokens: int, work: Path) -> None:
    """In this process: a random BERT-base exported to WORK/bert_base.onnx, its calibration sequences."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig()).eval()

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 30000, (sequences, tokens))
    mask = np.ones_like(ids)
    axes = {0: "batch", 1: "tokens"}
    torch.onnx.export(
        Hidden(bert), (torch.from_numpy(ids[:2]), torch.from_numpy(mask[:2])), str(work / "bert_base.onnx"),
        input_names=["input_ids", "attention_mask"], output_names=["hidden"],
        dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    np.savez(work / "calib.npz", input_ids=ids, attention_mask=mask)


def compress_bert(sequences: int, tokens: int, work: Path) -> dict:
    """A random BERT-base exported (a child) and compressed to INT8 by the CLI (another): its peak RSS.
    This process stays small: the CLI's high-water mark (ru_maxrss of its child) starts at its size."""
    export = [sys.executable, __file__, "--child-export", str(work), "--sequences", str(sequences)]
    subprocess.run([*export, "--tokens", str(tokens)], check=True, capture_output=True)
    out = work / "int8"
    edgekit = str(Path(sys.executable).parent / "edgekit")
    cmd = [edgekit, "compress", str(work / "bert_base.onnx"), "--int8", "--calib", str(work / "calib.npz")]
    cmd += ["-o", str(out)]
    console.print(" ".join(cmd))
    start = time.perf_counter()
    with open(work / "compress.log", "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    result = {
        "exit_code": proc.returncode,
        "seconds": time.perf_counter() - start,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
        "sequences": sequences,
        "tokens": tokens,
    }
    if (out / "edgekit.json").is_file():
        passes = json.loads((out / "edgekit.json").read_text())["passes"]
        summary = next(p["summary"] for p in passes if p["name"] == "int8")
        result["adaround"] = summary.get("adaround") or summary.get("static_candidate", {}).get("adaround")
        result["recipe"] = summary.get("transformer", {}).get("choice", {}).get("recipe")
    return result


def rows(solve: dict, bert: dict) -> list[tuple[str, str]]:
    a = bert.get("adaround") or {}
    return [
        (
            f"solve alone: {solve['products']} products, {solve['weights'] / 1e6:.1f} M weights, "
            "300 iterations",
            f"{solve['bytes_per_weight']:.0f} bytes a weight at the peak (counted: "
            f"{solve['counted_bytes_per_weight']}), {solve['seconds']:.0f} s",
        ),
        ("BERT-base `compress --int8`: exit code, seconds", f"{bert['exit_code']}, {bert['seconds']:.0f}"),
        ("BERT-base `compress --int8`: peak RSS", f"{bert['peak_rss_bytes'] / (1 << 30):.2f} GiB"),
        (
            "its AdaRound (products, iterations, left nearest for time / memory, seconds)",
            f"{a.get('layers', '—')}, {a.get('iterations', 300)}, {a.get('left_nearest_for_time', 0)} / "
            f"{a.get('left_nearest_for_memory', 0)}, {a.get('seconds', '—')}",
        ),
        ("the recipe chosen", str(bert.get("recipe"))),
    ]


def markdown(solve: dict, bert: dict, args, fp: dict) -> str:
    lines = [
        "<!-- adaround_memory:start -->",
        "## AdaRound's memory on a BERT-base-sized transformer",
        "",
        f"`.venv/bin/python bench/adaround_memory.py --blocks {args.blocks} --sequences {args.sequences} "
        f"--tokens {args.tokens}`, {time.strftime('%Y-%m-%d')}. CPU: {cpu_line(fp)}",
        "",
        "The solve alone on BERT-base's weight products (four 768x768 and two 768x3072 a layer, random "
        "weights), its peak RSS above the process's size before it, per weight, in a child process; and "
        "a randomly initialised BERT-base (`transformers`, legacy exporter, opset 17) through `edgekit "
        "compress --int8`, calibrated on random token sequences: random weights say what it costs, "
        "nothing of accuracy. The memory limit counts `adaround.BYTES_PER_WEIGHT` a weight.",
        "",
        "| | |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in rows(solve, bert)),
        "",
        "<!-- adaround_memory:end -->",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=2, help="BERT-base layers' products for the solve alone")
    p.add_argument("--sequences", type=int, default=200, help="calibration sequences for the BERT-base")
    p.add_argument("--tokens", type=int, default=64, help="tokens a sequence")
    p.add_argument("--child-solve", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-export", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_solve:
        print(json.dumps(child_solve(args.child_solve)))
        return
    if args.child_export:
        child_export(args.sequences, args.tokens, args.child_export)
        return
    with tempfile.TemporaryDirectory(prefix="edgekit-adaround-memory-") as tmp:
        bert = compress_bert(args.sequences, args.tokens, Path(tmp))
    cmd = [sys.executable, __file__, "--child-solve", str(args.blocks)]
    solve = json.loads(
        subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
    )
    fp = host()
    t = Table(title="AdaRound's memory", title_justify="left")
    t.add_column("")
    t.add_column("", justify="right")
    for k, v in rows(solve, bert):
        t.add_row(k, v)
    console.print(t)
    out = ROOT / "bench" / "results" / "adaround_memory.json"
    out.write_text(json.dumps({"host": fp, "solve": solve, "bert": bert}, indent=2) + "\n")
    write_section("adaround_memory", markdown(solve, bert, args, fp))
    sys.exit(0 if bert["exit_code"] == 0 else 1)


if __name__ == "__main__":
    main()
