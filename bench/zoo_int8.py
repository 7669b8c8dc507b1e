"""Issue 13's numbers: every dev-zoo model through `edgekit compress --int8`, beside the two anchors.

    make zoo && .venv/bin/python bench/zoo_int8.py [--models minilm,craft,crnn] [--calib 300]
        [--eval 300] [--work DIR]

For each ZooCase (bench/zoo_*.py: real pretrained weights, real-looking data) the
real CLI runs as a user runs it (`edgekit compress MODEL --int8 --calib .. --eval .. --output-kind
NAME=KIND ...`, exit code and seconds recorded). Beside it, from the same fp32 ONNX (the user's
file, or for a torch model the fp32 ONNX edgekit exports) and the same calibration samples: ONNX
Runtime's `quantize_static` with every default, and NNCF PTQ (model_type TRANSFORMER where the graph
has attention, its own advice for transformers; defaults otherwise) run by OpenVINO in f32. All
three are compared with the fp32 model in ONNX Runtime on the evaluation samples, each output by its
kind (edgekit.benchmarks.metrics). Writes bench/results/zoo_int8-CLASS.json and its docs/BENCHMARKS.md
section, one per CPU class (INT8 forms and speeds differ between them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo_formats
import zoo_text
from _markdown import cpu_line, write_section
from rich.console import Console
from rich.table import Table
from zoo_case import ZooCase

from edgekit import batching
from edgekit.artifact import read_manifest
from edgekit.benchmarks.fingerprint import host
from edgekit.benchmarks.metrics import fidelity, interleaved_medians, kind_line
from edgekit.compress import output_kinds, selection
from edgekit.data import Samples, load_samples, recorded_preprocess
from edgekit.export.check import openvino_refusals
from edgekit.runtimes import ov as ov_runtime

ROOT = Path(__file__).resolve().parents[1]
EDGEKIT = str(Path(sys.executable).with_name("edgekit"))
console = Console()

# case name -> the function that builds it (and its siblings) in a work directory
REGISTRY: dict[str, Callable[[Path], list[ZooCase]]] = dict.fromkeys(zoo_text.NAMES, zoo_text.cases)
try:
    import zoo_ocr

    REGISTRY |= {"craft": zoo_ocr.cases, "crnn": zoo_ocr.cases}
except ImportError:  # the OCR zoo is optional: its module, or its packages, may be absent
    pass
try:
    import zoo_outside

    REGISTRY |= dict.fromkeys(zoo_outside.NAMES, zoo_outside.cases)
except ImportError:
    pass

try:
    import zoo_torch

    REGISTRY |= dict.fromkeys(zoo_torch.NAMES, zoo_torch.cases)
except ImportError:
    pass
try:
    import zoo_packaged

    REGISTRY |= dict.fromkeys(zoo_packaged.NAMES, zoo_packaged.cases)
except ImportError:
    pass
REGISTRY |= dict.fromkeys(zoo_formats.NAMES, zoo_formats.cases)

VARIANTS = {
    "edgekit": "edgekit compress --int8",
    "unfused": "the same, --no-fused-activations",
    "ort": "ORT quantize_static defaults",
    "nncf": "NNCF PTQ",
    "nncf_readable": "NNCF PTQ on the copy edgekit gives OpenVINO (edgekit.runtimes.ov.readable)",
}


def _cases(names: list[str], work: Path) -> list[ZooCase]:
    """The ZooCases called NAMES, each builder run once in WORK."""
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(REGISTRY)}")
    built: dict[Callable, list[ZooCase]] = {}
    for name in names:
        if REGISTRY[name] not in built:
            built[REGISTRY[name]] = REGISTRY[name](work)
    return [c for cases in built.values() for c in cases if c.name in names]


def _compress(case: ZooCase, out: Path, args, int8: bool, *extra: str) -> tuple[int, float, str]:
    """The real CLI on CASE (INT8, or fp32 only); exit code, seconds, and its last stderr line."""
    cmd = [EDGEKIT, "compress", str(case.model), *case.args, "--calib", str(case.calib)]
    cmd += ["--calib-size", str(args.calib), "-o", str(out), "--force", *extra]
    if int8:
        cmd += ["--int8", "--eval", str(case.eval), "--eval-size", str(args.eval)]
        cmd += [x for name, kind in case.kinds.items() for x in ("--output-kind", f"{name}={kind}")]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t
    last = (proc.stderr.strip().splitlines() or [""])[-1]
    console.print(f"{case.name}: {' '.join(cmd[1:])} -> exit {proc.returncode} in {seconds:.0f} s")
    if proc.returncode not in (0, 1):
        console.print(proc.stderr[-2000:])
    return proc.returncode, seconds, last


def _feeds(samples: Samples, fixed: int | None, batch: int) -> list[dict[str, np.ndarray]]:
    return [feeds for feeds, _ in batching.batches(samples.inputs, fixed, batch)]


def _ort_outputs(path: Path, samples: Samples, fixed: int | None) -> list[np.ndarray]:
    return batching.outputs(_ort_run(path), samples.inputs, fixed, 16)


def _ort_defaults(fp32: Path, calib: Samples, fixed: int | None, out: Path) -> Path:
    """ORT's quantize_static with every default (QDQ, s8 x s8, per-tensor, MinMax), one sample a batch."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(_feeds(calib, fixed, 1))

        def get_next(self):
            return next(self.it, None)

    # MinMax ranges merged every few samples: the same ranges as keeping all of them (the default),
    # which holds a 640x640 detector's 1.4 GB of activations per sample until the end
    # (ORT raises "No data is collected" where the samples end exactly at a merge: a count that
    # does not divide them)
    every = next(k for k in (3, 4, 5, 7, 11) if len(calib) % k)
    quantize_static(str(fp32), str(out), Reader(), extra_options={"CalibMaxIntermediateOutputs": every})
    return out


def _nncf(fp32: Path, calib: Samples, fixed: int | None, transformer: bool, out: Path) -> Path:
    """NNCF PTQ on the same samples (TRANSFORMER where the graph has attention), saved as OpenVINO IR."""
    import nncf
    import openvino as ov

    items = _feeds(calib, fixed, 1)
    kind = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    q = nncf.quantize(ov.Core().read_model(str(fp32)), nncf.Dataset(items), subset_size=len(items), **kind)
    ov.save_model(q, str(out), compress_to_fp16=False)
    return out


def _ov_outputs(path: Path, samples: Samples, fixed: int | None) -> list[np.ndarray]:
    return batching.outputs(_ov_run(path), samples.inputs, fixed, 1)


def _per_sample(run, samples: Samples, fixed: int | None) -> list[list[np.ndarray]]:
    """RUN's outputs for each sample alone: a model whose outputs are sized by the data (a detector
    with NonMaxSuppression in its graph) has no batch axis to concatenate on."""
    return [run(feeds) for feeds, _ in batching.batches(samples.inputs, fixed, 1)]


def _ort_run(path: Path):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda f: sess.run(None, f)


def _ov_run(path: Path):
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return lambda f: [r[o] for r in [compiled(f)] for o in compiled.outputs]


def _selection_row(ref: list[list[np.ndarray]], out: list[list[np.ndarray]], names, seconds: float, **extra):
    """Each output of a data-sized model compared per sample as edgekit's verification does
    (edgekit.compress.selection.compare: same count; overlap of the selected rows)."""
    chosen = {
        name: selection.compare([r[k] for r in ref], [o[k] for o in out]) for k, name in enumerate(names)
    }
    return {"seconds": seconds, "selection": chosen, **extra}


def _latency(paths: dict[str, Path], feeds: dict[str, np.ndarray], rounds: int) -> dict[str, float]:
    """Median of round medians (ms) of each ONNX model in ONNX Runtime on one sample's FEEDS, the
    models interleaved in one process (edgekit.benchmarks.metrics.interleaved_medians)."""
    import onnxruntime as ort

    runners = {}
    for k, path in paths.items():
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        runners[k] = lambda s=sess: s.run(None, feeds)
    return {k: float(np.median(v)) for k, v in interleaved_medians(runners, rounds, runs=30).items()}


def _row(ref, out, names, kinds, seconds: float, **extra) -> dict:
    fid = fidelity(ref, out, names, kinds)
    outputs = {k: v for k, v in fid.items() if k.startswith("output_")}
    return {"seconds": seconds, "outputs": outputs, **extra}


def _reason(e: Exception) -> str:
    """An anchor's failure in a line: its first, or where OpenVINO says which node it refused and why
    ("-- If-13 with a message: ... Rank of If condition input must be equal to 0 or 1"), that."""
    refused = openvino_refusals(str(e))
    if refused:
        return "; ".join(f"OpenVINO refuses {op}: {why}" for op, why in refused.items())[:200]
    return str(e).splitlines()[0][:200]


def measure(case: ZooCase, args, root: Path) -> dict:
    import onnx

    from edgekit.compress.smooth import has_attention

    work = root / case.name
    work.mkdir(parents=True, exist_ok=True)
    code, seconds, last = _compress(case, work / "int8", args, int8=True)
    if not (work / "int8" / "edgekit.json").is_file():
        return {"model": case.name, "data": case.data, "error": last, "rows": {}, "exit": code}
    manifest = read_manifest(work / "int8")
    if case.model.suffix == ".onnx":
        fp32 = case.model
    else:  # a torch model: the anchors start from the fp32 ONNX edgekit exports
        _compress(case, work / "fp32", args, int8=False)
        fp32 = work / "fp32" / "model.onnx"
    spec, pre = manifest.input_spec, recorded_preprocess(manifest)
    fixed = spec.fixed_batch
    calib = load_samples(str(case.calib), spec, args.calib, pre, 0, "calib")
    evals = load_samples(str(case.eval), spec, args.eval, pre, 0, "eval")
    names = [o.name for o in onnx.load(str(fp32), load_external_data=False).graph.output]
    kinds = output_kinds.graph_kinds(fp32, case.kinds)  # judged as edgekit judges them
    transformer = has_attention(onnx.load(str(fp32), load_external_data=False).graph)
    if selection.split(fp32, work / "without_selection.onnx") is not None:  # outputs sized by the data
        ref = _per_sample(_ort_run(fp32), evals, fixed)

        def judged(path: Path, seconds: float, ov: bool = False, **extra) -> dict:
            out = _per_sample((_ov_run if ov else _ort_run)(path), evals, fixed)
            return _selection_row(ref, out, names, seconds, **extra)
    else:
        ref = _ort_outputs(fp32, evals, fixed)

        def judged(path: Path, seconds: float, ov: bool = False, **extra) -> dict:
            out = (_ov_outputs if ov else _ort_outputs)(path, evals, fixed)
            return _row(ref, out, names, kinds, seconds, **extra)

    rows = {"edgekit": judged(work / "int8" / "model.onnx", seconds, exit=code)}
    if manifest.passes[-1].summary.get("fused_activations"):  # what the fused GELUs are worth
        code_u, seconds_u, _ = _compress(case, work / "unfused", args, True, "--no-fused-activations")
        rows["unfused"] = judged(work / "unfused" / "model.onnx", seconds_u, exit=code_u)
    try:
        t = time.perf_counter()
        path = _ort_defaults(fp32, calib, fixed, work / "ort_defaults.onnx")
        rows["ort"] = judged(path, time.perf_counter() - t)
    except Exception as e:  # an anchor that fails is a result too
        rows["ort"] = {"error": _reason(e)}
    model_type = "TRANSFORMER" if transformer else "default"
    try:
        t = time.perf_counter()
        path = _nncf(fp32, calib, fixed, transformer, work / "nncf.xml")
        rows["nncf"] = judged(path, time.perf_counter() - t, ov=True, model_type=model_type)
    except Exception as e:
        rows["nncf"] = {"error": _reason(e)}
        with ov_runtime.readable(fp32) as copy:  # what NNCF does once OpenVINO can read the file
            if copy != str(fp32):
                try:
                    t = time.perf_counter()
                    path = _nncf(Path(copy), calib, fixed, transformer, work / "nncf_readable.xml")
                    seconds_n = time.perf_counter() - t
                    rows["nncf_readable"] = judged(path, seconds_n, ov=True, model_type=model_type)
                except Exception as e:
                    rows["nncf_readable"] = {"error": _reason(e)}
    if args.rounds:  # ORT latency of the ONNX variants vs fp32, one sample, interleaved
        paths = {"fp32": fp32, "edgekit": work / "int8" / "model.onnx"}
        if "unfused" in rows:
            paths["unfused"] = work / "unfused" / "model.onnx"
        if "error" not in rows["ort"]:
            paths["ort"] = work / "ort_defaults.onnx"
        one = next(iter(_feeds(evals.take(slice(0, 1)), fixed, 1)))
        ms = _latency(paths, one, args.rounds)
        for k in paths.keys() - {"fp32"}:
            rows[k]["ort_latency_ratio"] = ms[k] / ms["fp32"]
        rows["edgekit"]["ort_fp32_ms"] = ms["fp32"]
    for k, r in rows.items():
        console.print(f"{case.name} {k}: " + "; ".join(_cells(r)))
    return {
        "model": case.name,
        "source": case.model.name,
        "data": case.data,
        "calib": len(calib),
        "eval": len(evals),
        "exit": code,
        "edgekit_message": last if code else "",
        "rows": rows,
    }


def _cells(row: dict) -> list[str]:
    """One line per output: its kind's metric and SQNR; or the error."""
    if "error" in row:
        return [f"failed: {row['error']}"]
    if "selection" in row:  # a data-sized output: the selections compared per sample
        return [
            f"{name}: same count as fp32 {c['same_count']:.1%}"
            + (
                f", rows IoU {c['rows_iou']:.3f} ({c['rows_iou_selected']:.3f} where fp32 selects)"
                if "rows_iou" in c
                else ""
            )
            for name, c in row["selection"].items()
        ]
    if all(fid.get("max_abs_diff") == 0 for fid in row["outputs"].values()):
        return ["identical to fp32: nothing was quantized"]
    return [
        f"{fid.get('name', k)}: {kind_line(fid)}, SQNR {fid['sqnr_db']:.1f} dB"
        for k, fid in row["outputs"].items()
    ]


def show(result: dict) -> None:
    t = Table(
        title=f"{result['model']} ({result.get('data', '')}), edgekit exit {result['exit']}",
        title_justify="left",
    )
    for col in ("variant", "fidelity to fp32 (by output kind)", "seconds"):
        t.add_column(col, justify="right" if col == "seconds" else "left")
    for k, r in result["rows"].items():
        t.add_row(VARIANTS[k], "\n".join(_cells(r)), f"{r['seconds']:.0f}" if "seconds" in r else "—")
    console.print(t)


def _section(fp: dict) -> str:
    """The name of the results file and BENCHMARKS.md section for FP's CPU class."""
    return f"zoo_int8-{fp.get('cpu_class', 'unknown')}"


def markdown(results: list[dict], command: str, fp: dict) -> str:
    lines = [
        f"<!-- {_section(fp)}:start -->",
        f"## Dev zoo: real pretrained models through `edgekit compress --int8` on a {fp.get('cpu_class')} CPU"
        " (issue 13)",
        "",
        f"Latest run: `{command}`, {fp.get('date', '?')}, on {cpu_line(fp)}; "
        + ", ".join(f"{k} {v}" for k, v in fp["libraries"].items())
        + ". Each model's own run is named under it, and its CPU where it is another.",
        "",
        "Each model as its users have it (bench/zoo_text.py, bench/zoo_ocr.py, bench/zoo_outside.py, "
        "bench/zoo_torch.py, bench/zoo_packaged.py, bench/zoo_formats.py) goes through the real CLI "
        "(`edgekit compress MODEL --int8 --calib .. --eval .. --output-kind NAME=KIND`); beside it, from "
        "the same fp32 ONNX and the same calibration samples, ONNX Runtime's `quantize_static` with every "
        "default, and NNCF PTQ (`model_type=TRANSFORMER` where the graph has attention) run by OpenVINO "
        "in f32. Fidelity to the fp32 model in ONNX Runtime on held-out samples, each output by its kind: "
        "embeddings by cosine (mean, min over samples), class sequences by agreement, maps by mask IoU; "
        "SQNR for all. ORT latency / fp32: batch 1, ONNX Runtime's default threads, median of `--rounds` "
        "interleaved round medians (30 runs each) against the fp32 model in the same process (NNCF's IR "
        "runs in OpenVINO: not comparable there). Seconds: the whole CLI run for edgekit (export, "
        "calibration, verification), the quantization call for the anchors, on a shared machine: "
        "indicative only.",
        "",
    ]
    for r in results:
        lines += [
            f"### {r['model']}: {r.get('data', '')}",
            "",
            f"`{r.get('source', '')}`, {r.get('calib', '?')} calibration and {r.get('eval', '?')} evaluation "
            f"samples; `edgekit compress --int8` exit code **{r['exit']}**"
            + (f" ({r['edgekit_message']})" if r.get("edgekit_message") else "")
            + (f"; measured by `{r['command']}`, {r['date']}" if "command" in r else "; an earlier run")
            + (f", on {r['cpu']}" if r.get("cpu", cpu_line(fp)) != cpu_line(fp) else "")
            + ".",
            "",
            "| variant | fidelity to fp32 | ORT latency / fp32 | seconds |",
            "|---|---|---:|---:|",
        ]
        for k, row in r["rows"].items():
            name = VARIANTS[k] + (f" ({row['model_type']})" if "model_type" in row else "")
            secs = f"{row['seconds']:.0f}" if "seconds" in row else "—"
            ratio = f"{row['ort_latency_ratio']:.2f}" if "ort_latency_ratio" in row else "—"
            lines.append(f"| {name} | {'<br>'.join(_cells(row))} | {ratio} | {secs} |")
        lines.append("")
    lines.append(f"<!-- {_section(fp)}:end -->")
    return "\n".join(lines)


def _save(result: dict, command: str, fp: dict) -> None:
    """Add RESULT to bench/results/zoo_int8-CLASS.json (replacing that model's earlier result) and
    rewrite its BENCHMARKS.md section. Each result keeps the CPU it was measured on (a result saved
    before results named theirs: the file's host), which the section names where it is not the
    latest run's."""
    out = ROOT / "bench" / "results" / f"{_section(fp)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.is_file() else {}
    was = cpu_line(old["host"]) if old else ""
    result = {**result, "command": command, "date": fp.get("date", "?"), "cpu": cpu_line(fp)}
    results = [{"cpu": was} | r for r in old.get("results", []) if r["model"] != result["model"]] + [result]
    out.write_text(json.dumps({"host": fp, "command": command, "results": results}, indent=2) + "\n")
    write_section(_section(fp), markdown(results, command, fp))
    console.print(f"wrote {out} and docs/BENCHMARKS.md")


def _installed(name: str) -> bool:
    try:
        version(name)
    except PackageNotFoundError:
        return False
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(REGISTRY), help=f"of {', '.join(REGISTRY)}")
    p.add_argument("--calib", type=int, default=300, help="calibration samples at most (edgekit's default)")
    p.add_argument("--eval", type=int, default=300, help="evaluation samples at most")
    p.add_argument("--work", type=Path, help="keep models, data and artifacts here (default: a temp dir)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds (0: no latency)")
    p.add_argument("--rewrite", action="store_true", help="only rewrite BENCHMARKS.md from the saved results")
    args = p.parse_args()
    if args.rewrite:
        for path in sorted((ROOT / "bench" / "results").glob("zoo_int8-*.json")):
            saved = json.loads(path.read_text())
            fp = saved["host"]
            write_section(_section(fp), markdown(saved["results"], saved["command"], fp))
        return
    fp = host() | {"date": time.strftime("%Y-%m-%d")}  # the day measured, kept for --rewrite
    fp["libraries"] |= {name: version(name) for name in ("nncf", "transformers") if _installed(name)}
    command = (
        f"make zoo && .venv/bin/python bench/zoo_int8.py --models {args.models} "
        f"--calib {args.calib} --eval {args.eval} --rounds {args.rounds}"
    )
    console.print(f"CPU: {cpu_line(fp)}")
    with tempfile.TemporaryDirectory(prefix="edgekit-zoo-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        for case in _cases(args.models.split(","), root):
            result = measure(case, args, root)
            if result["rows"]:
                show(result)
            else:
                console.print(
                    f"{case.name}: edgekit wrote no artifact (exit {result['exit']}): {result['error']}"
                )
            _save(result, command, fp)


if __name__ == "__main__":
    main()
