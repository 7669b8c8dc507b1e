"""Issue 14's "with labels, top-1 drop <= 1 point", on the only labels these photos have: the
ImageNet classes of each photo's subject (bench/zoo.py SUBJECTS: a cat, a cup of coffee, a rocket,
a motorcycle, a temple, a tripod; 6 of the 12 photos), a crop counted right where its top-1 is one
of its photo's classes.

    make zoo && .venv/bin/python bench/int8_labels.py [--models ...] [--eval 2000] [--work DIR]

For each zoo CNN: fp32 (ORT), edgekit's INT8 in the form `--int8` makes for this CPU (ORT's fused
kernels, as deployed) and NNCF PTQ in OpenVINO (the anchor), on the --eval crops of seed 1 (those
of bench/int8_error_sources.py, decoded without its JPEG round trip) whose photo has a subject.
A crop may cut its subject out (25-100 % of the photo): that costs fp32 and INT8 alike; the drop is
what quantization changed. --work shares bench/int8_cpu.py's and int8_error_sources.py's artifacts.
Writes docs/BENCHMARKS.md (a section per CPU class) and bench/results/int8_labels-CLASS.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo
from _markdown import cpu_line, write_section
from int8_cpu import _artifacts, _ort_outputs, _ov_outputs, nncf_ir
from rich.console import Console
from rich.table import Table

from edgekit.benchmarks.fingerprint import host
from edgekit.target_cpu import auto_form, here

ROOT = Path(__file__).resolve().parents[1]
console = Console()
VARIANTS = {
    "fp32": "fp32 (ORT)",
    "int8": "edgekit INT8 (FORM), ORT fused kernels",
    "nncf": "NNCF PTQ in OpenVINO",
}


def _measured(name: str, args, root: Path) -> dict:
    """Top-1 accuracy on the labelled crops of each variant of NAME, and its agreement with fp32."""
    paths = _artifacts(name, root / name, root / "calib", args.calib, [args.form])
    nncf = nncf_ir(paths["fp32"], root / "calib", args.calib)
    sources = zoo.photo_sources(args.eval, seed=1)
    keep = np.array([zoo.SUBJECTS[s] is not None for s in sources])
    x = zoo.model_photos(name, args.eval, seed=1)[keep]
    classes = [zoo.SUBJECTS[s] for s in sources[keep]]
    top = {
        "fp32": _ort_outputs(paths["fp32"] / "model.onnx", x, args.threads).argmax(1),
        "int8": _ort_outputs(paths[args.form] / "model.onnx", x, args.threads).argmax(1),
        "nncf": _ov_outputs(nncf, x).argmax(1),
    }
    right = {k: np.array([int(t) in c for t, c in zip(v, classes, strict=True)]) for k, v in top.items()}
    result = {"model": name, "form": args.form, "labelled": int(keep.sum()), "eval": args.eval}
    for k in top:
        result[k] = {
            "top1": float(right[k].mean()),
            "agreement": float((top[k] == top["fp32"]).mean()),
            "drop_points": float(100 * (right["fp32"].mean() - right[k].mean())),
        }
    console.print(result)
    return result


def markdown(results: list[dict], args, fp: dict) -> str:
    cls = fp.get("cpu_class", "unknown")
    lines = [
        f"<!-- int8_labels-{cls}:start -->",
        f"## Top-1 with labels: the photos' subjects, on a {cls} CPU (issue 14)",
        "",
        f"`make zoo && .venv/bin/python bench/int8_labels.py --eval {args.eval} --calib {args.calib}`, on "
        f"{cpu_line(fp)}. The {results[0]['labelled']} of {args.eval} held-out crops (seed 1) whose photo "
        "has an ImageNet subject (bench/zoo.py SUBJECTS: a cat, a cup of coffee, a rocket, a motorcycle, a "
        "temple, a tripod), counted right where the top-1 is one of that subject's classes; a crop may cut "
        "the subject out, for every variant alike. Top-1 accuracy (its change from fp32, in points; top-1 "
        "agreement with fp32 on the same crops).",
        "",
        "| variant | " + " | ".join(r["model"] for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for k, label in VARIANTS.items():
        cells = []
        for r in results:
            v = r[k]
            cells.append(
                f"{100 * v['top1']:.1f} %"
                if k == "fp32"
                else f"{100 * v['top1']:.1f} % ({-v['drop_points']:+.1f}; {100 * v['agreement']:.1f} %)"
            )
        lines.append(f"| {label.replace('FORM', results[0]['form'])} | " + " | ".join(cells) + " |")
    lines += ["", f"<!-- int8_labels-{cls}:end -->"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_lite1,mobilenet_v2,efficientnet_lite2")
    p.add_argument("--calib", type=int, default=200)
    p.add_argument("--eval", type=int, default=2000)
    p.add_argument("--form", help="the INT8 form measured (default: the one --int8 makes for this CPU)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, help="keep the artifacts here (int8_cpu.py's --work too)")
    args = p.parse_args()
    args.form = args.form or auto_form(here())
    fp = host()
    with tempfile.TemporaryDirectory(prefix="edgekit-labels-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "calib").is_dir():
            zoo.write_image_folder(root / "calib", args.calib, seed=0)
        results = [_measured(name, args, root) for name in args.models.split(",")]
    t = Table(title=f"top-1 with the photos' subjects as labels ({fp.get('cpu_class')}, {args.form})")
    t.add_column("variant")
    for r in results:
        t.add_column(r["model"], justify="right")
    for k, label in VARIANTS.items():
        t.add_row(label.replace("FORM", args.form), *(f"{100 * r[k]['top1']:.1f} %" for r in results))
    console.print(t)
    out = ROOT / "bench" / "results" / f"int8_labels-{fp.get('cpu_class')}.json"
    out.write_text(json.dumps({"host": fp, "results": results}, indent=2) + "\n")
    write_section(f"int8_labels-{fp.get('cpu_class')}", markdown(results, args, fp))
    console.print(f"wrote {out} and docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
