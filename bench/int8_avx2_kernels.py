"""Issue 14's latency on an AVX2-only CPU, on one or measured on a CPU with more: the zoo CNNs' INT8
artifact as `--int8` makes it for x86-avx2 (u8s8-pair) against ORT fp32, on the AVX2 kernels (on a
CPU with more, its AVX-512, VNNI and AMX hidden from CPUID: edgekit.cpuid_mask, and on its own
kernels too); beside them OpenVINO running the same QDQ file and NNCF's IR (the anchor).

    make zoo && .venv/bin/python bench/int8_avx2_kernels.py [--models ...] [--rounds 7] [--work DIR]

The artifacts and NNCF's IR are made under the mask too (the range search times and chooses on the
AVX2 kernels, as on such a CPU). ORT's variants are interleaved in one process per kernel set,
OpenVINO's in another. What carries over to an AVX2 CPU is the ratio between variants on the same
kernels; the absolute times are this machine's cores (another microarchitecture, clock and caches
than a Zen 3). On an AVX2-only CPU nothing is masked: its section and JSON are `-native`. Writes
docs/BENCHMARKS.md (its section) and bench/results/int8_avx2_kernels[-native].json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo
from _markdown import cpu_line, write_section
from int8_cpu import _artifacts, _ort_latency, _ov_latency, nncf_ir
from rich.console import Console
from rich.table import Table

from edgekit import cpuid_mask
from edgekit.benchmarks.fingerprint import host

ROOT = Path(__file__).resolve().parents[1]
console = Console()
FORM = "u8s8-pair"
ROWS = {  # variant: label
    "ort_int8": f"edgekit INT8 ({FORM}) in ORT",
    "ov_int8": "the same QDQ file in OpenVINO",
    "nncf": "NNCF PTQ in OpenVINO (the anchor)",
    "ov_fp32": "OpenVINO fp32",
}


def _child(job: dict, masked: list[str] | None) -> dict:
    """Run this script's JOB in a fresh process, under MASKED (the CPUID mask's prefix) where given."""
    env = dict(os.environ, EDGEKIT_TARGET_CPU="x86-avx2")
    proc = subprocess.run(
        [*(masked or []), sys.executable, __file__, "--child", json.dumps(job)],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{job['do']} failed: {proc.stderr.strip().splitlines()[-3:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _make(job: dict) -> dict:
    """The fp32 and INT8 artifacts and NNCF's IR of one zoo model (kept in the work folder)."""
    root, name = Path(job["work"]), job["model"]
    paths = _artifacts(name, root / name, root / "calib", job["calib"], [FORM])
    nncf = nncf_ir(paths["fp32"], root / "calib", job["calib"])
    return {
        "fp32": str(paths["fp32"] / "model.onnx"),
        "int8": str(paths[FORM] / "model.onnx"),
        "nncf": str(nncf),
    }


def _measure(job: dict) -> dict:
    """Medians (ms) of the ORT and OpenVINO variants on this process's kernels, and what numpy's own
    CPUID probe saw (the mask's check)."""
    from numpy._core._multiarray_umath import __cpu_features__ as seen

    paths, size = job["paths"], zoo.MODELS[job["model"]].size
    x = zoo.model_photos(job["model"], 1, seed=2)
    ort_ms = _ort_latency(
        {"fp32": Path(paths["fp32"]), "int8": Path(paths["int8"])}, x, job["rounds"], job["threads"]
    )
    ov_ms = _ov_latency(
        {k: Path(paths[k]) for k in ("fp32", "int8", "nncf")}, size, job["rounds"], job["threads"], None
    )
    return {
        "ort_fp32": ort_ms["fp32"],
        "ort_int8": ort_ms["int8"],
        "ov_fp32": ov_ms["fp32"],
        "ov_int8": ov_ms["int8"],
        "nncf": ov_ms["nncf"],
        "ov_kernels": ov_ms["_kernels"],
        "avx512f_seen": bool(seen.get("AVX512F")),
    }


def _model(name: str, root: Path, args, masked: list[str] | None) -> dict:
    """One model's artifacts (made under the mask) and its medians on the AVX2 kernels and on this CPU's;
    on an AVX2-only CPU (MASKED None) its own kernels are the AVX2 ones, measured once."""
    paths = _child({"do": "make", "work": str(root), "model": name, "calib": args.calib}, masked)
    job = {"do": "measure", "model": name, "paths": paths, "rounds": args.rounds, "threads": args.threads}
    result = {"model": name, "avx2": _child(job, masked)}
    if masked is not None:
        result["own"] = _child(job, None)
    if result["avx2"]["avx512f_seen"]:
        sys.exit("The CPUID mask did not take: the masked process still saw AVX-512.")
    console.print(result)
    return result


_KERNELS = {(False, "avx2"): "AVX2", (False, "own"): "own", (True, "avx2"): "AVX2 (native)"}


def _layout(native: bool) -> tuple[tuple[str, ...], str]:
    """The kernel sets measured (an AVX2-only CPU's own, or masked and own) and the section's name."""
    return (("avx2",), "int8_avx2_kernels-native") if native else (("avx2", "own"), "int8_avx2_kernels")


def markdown(results: list[dict], args, fp: dict, native: bool) -> str:
    kernels, name = _layout(native)
    if native:
        title = "## INT8 latency on an AVX2-only CPU (issue 14)"
        how = "made and timed on this CPU's own kernels, the AVX2 ones"
        columns = "Each column: this AVX2-only CPU's kernels."
    else:
        title = "## INT8 latency on the AVX2 kernels, measured on a CPU with more (issue 14)"
        how = (
            "made, and its range search run, with this CPU's AVX-512, VNNI and AMX hidden from CPUID, "
            "edgekit.cpuid_mask"
        )
        columns = (
            "The AVX2 columns are the kernels an AVX2-only CPU runs, on this machine's cores: their ratios "
            "are a guide to such a CPU's, not its times (the native run is its own section)."
        )
    lines = [
        f"<!-- {name}:start -->",
        title,
        "",
        f"`make zoo && .venv/bin/python bench/int8_avx2_kernels.py --rounds {args.rounds} --threads "
        f"{args.threads}`, on {cpu_line(fp)}. Each model's INT8 artifact as `--int8` makes it for "
        f"x86-avx2 ({FORM}, every default on; {how}), batch 1, "
        f"{args.threads} threads. Each cell: time as a share of ORT fp32 on the same kernels (ORT's "
        f"variants interleaved in one process, OpenVINO's in another, f32 precision pinned). {columns}",
        "",
        "| variant | "
        + " | ".join(f"{r['model']} {_KERNELS[native, w]}" for r in results for w in kernels)
        + " |",
        "|---|" + "---:|" * len(results) * len(kernels),
        "| ORT fp32, ms | " + " | ".join(f"{r[w]['ort_fp32']:.2f}" for r in results for w in kernels) + " |",
    ]
    for k, label in ROWS.items():
        cells = [f"{r[w][k] / r[w]['ort_fp32']:.2f}x" for r in results for w in kernels]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"<!-- {name}:end -->"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_lite1,mobilenet_v2,efficientnet_lite2")
    p.add_argument("--calib", type=int, default=200)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, help="keep the artifacts here (default: a temporary directory)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(_make(job) if job["do"] == "make" else _measure(job)))
        return
    fp = host()
    native = fp["cpu_class"] == "x86-avx2"
    masked = None if native else cpuid_mask.prefix("x86-avx2", fp["cpu_class"])
    if masked is None and not native:
        sys.exit(
            f"This CPU ({fp['cpu_class']}) cannot show AVX2 alone: that needs more than AVX2, x86-64 Linux "
            "with 'cpuid_fault' in /proc/cpuinfo, and a C compiler."
        )
    with tempfile.TemporaryDirectory(prefix="edgekit-avx2-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "calib").is_dir():
            zoo.write_image_folder(root / "calib", args.calib, seed=0)
        results = [_model(name, root, args, masked) for name in args.models.split(",")]
    kernels, name = _layout(native)
    t = Table(title=f"time as a share of ORT fp32 on the same kernels ({fp['cpu_class']})")
    t.add_column("variant")
    for r in results:
        for w in kernels:
            t.add_column(f"{r['model']} {_KERNELS[native, w]}", justify="right")
    t.add_row("ORT fp32, ms", *(f"{r[w]['ort_fp32']:.2f}" for r in results for w in kernels))
    for k, label in ROWS.items():
        t.add_row(label, *(f"{r[w][k] / r[w]['ort_fp32']:.2f}x" for r in results for w in kernels))
    console.print(t)
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.write_text(json.dumps({"host": fp, "results": results}, indent=2) + "\n")
    write_section(name, markdown(results, args, fp, native))
    console.print(f"wrote {out} and docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
