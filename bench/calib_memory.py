"""Issue 13's memory number: a 640x640 text detector calibrates with 300 images within edgekit's budget.

    make zoo && .venv/bin/python bench/calib_memory.py [--images 300] [--eval 16] [--budget 2G]

EasyOCR's CRAFT detector (bench/zoo_ocr.py: its shipped state_dict with `--arch`) goes through
`edgekit compress --int8` in a child process, calibrated on IMAGES rendered 640x640 scenes (text
over photo crops) with edgekit's default calibration (percentile histograms). Measured: the child's
peak RSS (the kernel's high-water mark, getrusage of the waited child), the memory budget edgekit
chose and the chunk it fed, seconds, exit code, and the INT8 model's fidelity on held-out scenes
(mask IoU and SQNR per output). Writes docs/BENCHMARKS.md (its section) and bench/results/calib_memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo_ocr
from _markdown import cpu_line, write_section
from rich.console import Console
from rich.table import Table

from edgekit import memory
from edgekit.benchmarks.fingerprint import host
from edgekit.benchmarks.metrics import kind_line

ROOT = Path(__file__).resolve().parents[1]
GIB = 1 << 30
console = Console()


def measure(images: int, evaluate: int, budget: str | None, work: Path) -> dict:
    """Render the scenes, run `edgekit compress --int8` on CRAFT as a child, and collect its numbers."""
    calib, held_out = work / "calib", work / "eval"
    for folder, n, seed in ((calib, images, 0), (held_out, evaluate, 1)):
        if len(list(folder.glob("*.png"))) != n:
            console.print(f"rendering {n} scenes into {folder}")
            zoo_ocr.write_pages(folder, n, seed)
    out = work / "craft_int8"
    cmd = [
        str(Path(sys.executable).parent / "edgekit"),
        "compress",
        str(zoo_ocr.weights_file("craft_mlt_25k.pth")),
    ]
    cmd += [*zoo_ocr.CRAFT_ARGS, "--int8", "--calib", str(calib), "--eval", str(held_out), "-o", str(out)]
    env = dict(os.environ, **({"EDGEKIT_CALIB_MEMORY": budget} if budget else {}))
    available = memory.available()
    console.print(" ".join(cmd))
    load_start = os.getloadavg()[0]
    start = time.perf_counter()
    log = work / "compress.log"  # edgekit's progress bars, to follow a long run
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    result = {
        "model": "CRAFT (EasyOCR craft_mlt_25k), 640x640",
        "images": images,
        "eval_images": evaluate,
        "exit_code": proc.returncode,
        "seconds": seconds,
        "peak_rss_bytes": peak,
        "available_bytes_at_start": available,
        "total_bytes": os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
        "budget_asked": budget,
        # 1-minute load averages at start and end: above the core count, other jobs shared the CPU
        "load_average": [load_start, os.getloadavg()[0]],
        "command": " ".join(["edgekit", *cmd[1:]]),
    }
    if proc.returncode != 0:
        result["stderr_tail"] = log.read_text()[-2000:]
    if not (out / "edgekit.json").is_file():  # exit 1 below a fidelity floor still writes the model
        return result
    manifest = json.loads((out / "edgekit.json").read_text())
    summary = next(p["summary"] for p in manifest["passes"] if p["name"] == "int8")
    result["calibration_memory"] = summary["calibration_memory"]
    result["int8_pass_seconds"] = next(p["seconds"] for p in manifest["passes"] if p["name"] == "int8")
    int8 = manifest["verification"]["int8"]
    result["fidelity"] = {
        f.get("name", k): {m: f[m] for m in ("kind", "mask_iou", "sqnr_db", "max_abs_diff") if m in f}
        for k, f in int8["fidelity"].items()
        if isinstance(f, dict)
    }
    result["floors_met"] = all(f["met"] for f in int8.get("floors", []))
    return result


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _fidelity(result: dict) -> str:
    outputs = result.get("fidelity", {}).items()
    return "; ".join(f"{name}: {kind_line(f)}, SQNR {f['sqnr_db']:.1f} dB" for name, f in outputs)


def rows(result: dict) -> list[tuple[str, str]]:
    mem = result.get("calibration_memory", {})
    return [
        ("exit code", str(result["exit_code"])),
        ("peak RSS of `edgekit compress`", _gib(result["peak_rss_bytes"])),
        (
            "memory available at start / total",
            f"{_gib(result['available_bytes_at_start'])} / {_gib(result['total_bytes'])}",
        ),
        ("calibration budget (edgekit's)", _gib(mem["budget_bytes"]) if mem else "—"),
        ("activations a sample", _gib(mem["bytes_per_sample"]) if mem else "—"),
        ("samples a run x runs", f"{mem['samples_per_run']} x {mem['runs']}" if mem else "—"),
        (
            "activations ORT's `quantize_static` holds to the end (computed: images x a sample)",
            _gib(result["images"] * mem["bytes_per_sample"]) if mem else "—",
        ),
        ("seconds (load, export, calibrate, verify)", f"{result['seconds']:.0f}"),
        (
            "load average at start, end (1 min)",
            ", ".join(f"{x:.1f}" for x in result.get("load_average", [])) or "—",
        ),
        ("seconds of the int8 pass (calibration, quantization)", f"{result.get('int8_pass_seconds', 0):.0f}"),
        (f"fidelity on {result['eval_images']} held-out scenes", _fidelity(result) or "—"),
    ]


def show(result: dict) -> None:
    t = Table(title=f"{result['model']}: calibration with {result['images']} images", title_justify="left")
    t.add_column("")
    t.add_column("", justify="right")
    for k, v in rows(result):
        t.add_row(k, v)
    console.print(t)
    if "stderr_tail" in result:
        console.print(result["stderr_tail"])


def markdown(result: dict, fp: dict) -> str:
    budget = f" with `--budget {result['budget_asked']}`" if result["budget_asked"] else ""
    lines = [
        "<!-- calib_memory:start -->",
        f"## Calibration memory: a 640x640 detector, {result['images']} images (issue 13)",
        "",
        f"`make zoo && .venv/bin/python bench/calib_memory.py --images {result['images']} "
        f"--eval {result['eval_images']}`{budget}. "
        "EasyOCR's CRAFT text detector (its shipped state_dict, `--arch bench.zoo_ocr:craft`) through "
        "`edgekit compress --int8` with the default percentile calibration, on scenes of DejaVu text "
        "rendered over photo crops. Peak RSS is the kernel's high-water mark of the `edgekit` process; "
        "it holds, beyond the calibration budget, the model, ONNX Runtime's buffers of the running "
        "sample and the export check's torch run.",
        "",
        f"CPU: {cpu_line(fp)}",
        "",
        "| | |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in rows(result)),
        "",
        "<!-- calib_memory:end -->",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300, help="calibration scenes")
    p.add_argument("--eval", type=int, default=16, help="held-out scenes the INT8 model is checked on")
    p.add_argument("--budget", help="EDGEKIT_CALIB_MEMORY for the child (default: edgekit's own)")
    p.add_argument("--work", type=Path, help="keep the scenes and the artifact here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgekit-calib-memory-") as tmp:
        result = measure(args.images, args.eval, args.budget, args.work or Path(tmp))
    fp = host()
    show(result)
    out = ROOT / "bench" / "results" / "calib_memory.json"
    out.write_text(json.dumps({"host": fp, "result": result}, indent=2) + "\n")
    write_section("calib_memory", markdown(result, fp))
    sys.exit(0 if result["exit_code"] == 0 else 1)


if __name__ == "__main__":
    main()
