"""Issue 14's speed number: `compress --int8 --max-accuracy-drop` on EfficientNet-Lite1, timed.

    make zoo && .venv/bin/python bench/mixed_speed.py [--calib 100] [--eval 300] [--budget 5]
        [--work DIR]

1. The whole CLI run, `edgekit compress <Lite1> --int8 --max-accuracy-drop BUDGET --eval ...`, by
   wall clock, with the trials its search made (from the artifact's manifest).
2. What one trial costs, in-process on the same fp32 export: an INT8 model calibrated for itself
   (every trial before: `quantize_int8`) against one written from reused ranges
   (`quantize.calibrated`), and a candidate's evaluation on all the evaluation samples against the
   ranking subset (sensitivity.SUBSET).
3. The search before (every trial recalibrated and scored on every sample) estimated from 2 and the
   trial count of 1: it did not finish in 30 minutes (issue 14), too long to run here each time.
The machine's load average is recorded with the numbers: on a shared machine it moves them.
Writes bench/results/mixed_speed.json and its section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo
from _markdown import cpu_line, write_section

from edgekit.artifact import read_manifest
from edgekit.benchmarks.fingerprint import host
from edgekit.compress import sensitivity as sens
from edgekit.compress.quantize import Int8Config, calibrated, quantize_int8
from edgekit.data import load_samples, recorded_preprocess
from edgekit.evaluate import predict, quality

ROOT = Path(__file__).resolve().parents[1]
MODEL = "efficientnet_lite1"


def _edgekit(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(ROOT / ".venv" / "bin" / "edgekit"), *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True)


def whole_run(root: Path, args) -> dict:
    """The CLI's budgeted search, timed, and what its manifest says it did."""
    out = root / "mixed"
    common = (*zoo.cli_args(MODEL), "--calib", root / "calib", "--calib-size", args.calib)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = _edgekit(
        "compress", root / f"{MODEL}.pt", *common, "--int8", "--eval", root / "eval",
        "--max-accuracy-drop", args.budget, "--force", "-o", out,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):  # 1: the budget was not met, the best model still written
        raise SystemExit(proc.stderr)
    manifest = read_manifest(out)
    s = manifest.passes[-1].summary
    # the ranking's prefixes scored (2 layers and up; edgekit.compress.mixed._prefixes)
    prefixes = sum(1 for c in s.get("tried", []) if len(c["kept_fp32"]) > 1)
    return {
        "seconds": seconds,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "exit_code": proc.returncode,
        "budget_met": s["budget_met"],
        "full_int8_drop_points": s["full_int8_drop_points"],
        "drop_points": s.get("drop_points", s["full_int8_drop_points"]),
        "kept_fp32": [k["node"] for k in s["kept_fp32"]],
        "layers_searched": s.get("layers_searched", 0),
        "ranked_on_samples": s.get("ranked_on_samples"),
        "prefix_trials": prefixes,
        "pass_seconds": {p.name: p.seconds for p in manifest.passes},
        "stages": s.get("seconds", {}),
        "message": proc.stderr.strip().splitlines()[-1] if proc.returncode else "",
    }


def per_trial(root: Path, args) -> dict:
    """Seconds of one recalibrated trial, one from reused ranges, and of the two evaluations."""
    fp32_dir = root / "fp32"
    if not (fp32_dir / "model.onnx").is_file():
        proc = _edgekit("export", root / f"{MODEL}.pt", *zoo.cli_args(MODEL), "-o", fp32_dir)
        if proc.returncode:
            raise SystemExit(proc.stderr)
    manifest = read_manifest(fp32_dir)
    spec, pre = manifest.input_spec, recorded_preprocess(manifest)
    calib = load_samples(str(root / "calib"), spec, args.calib, pre, 0, "calib")
    evals = load_samples(str(root / "eval"), spec, args.eval, pre, 0, "eval")
    fp32, cfg, t = fp32_dir / "model.onnx", Int8Config(), {"load_before": os.getloadavg()[0]}
    start = time.perf_counter()
    quantize_int8(fp32, root / "recalibrated.onnx", calib, cfg, None)
    t["recalibrated_trial"] = time.perf_counter() - start
    start = time.perf_counter()
    with calibrated(fp32, calib, cfg, None) as write:
        t["calibration_once"] = time.perf_counter() - start
        layer = sens.quantized_layers(root / "recalibrated.onnx")[0][0]
        start = time.perf_counter()
        write(root / "first.onnx", [])  # solves AdaRound's levels, which every later trial reuses
        t["first_trial"] = time.perf_counter() - start
        start = time.perf_counter()
        write(root / "reused.onnx", [layer])
        t["reused_trial"] = time.perf_counter() - start
    ref = predict(fp32, evals, None, "fp32")
    evaluate = sens.scorer(ref, evals, None, lambda want, out, s: quality(want, out, s, "eval"))
    for key, idx in (("eval_all", None), ("eval_subset", sens.subset(len(evals)))):
        start = time.perf_counter()
        evaluate(root / "reused.onnx", idx)
        t[key] = time.perf_counter() - start
    t["load_after"] = os.getloadavg()[0]
    return t


def estimate_before(run: dict, trial: dict) -> float:
    """The old search: full INT8, one trial per layer, every prefix up to the longest (2 to 1 + the
    layers searched), each recalibrated and scored on every sample; the candidates' timing left
    out (the same before and after)."""
    return _old_trials(run) * (trial["recalibrated_trial"] + trial["eval_all"])


def _old_trials(run: dict) -> int:
    """The old search's trials: full INT8, one per layer searched, the prefixes of 2 and more layers."""
    return 1 + run["layers_searched"] + max(run["layers_searched"] - 1, 0)


def _stages(run: dict) -> str:
    """Table rows: where the whole run's time went (the export, the search's stages, the rest)."""
    passes, stages = run.get("pass_seconds", {}), run.get("stages", {})
    if not stages:
        return ""
    rows = [("export (torch -> ONNX, verified)", passes.get("export"))]
    rows += [(f"search: {k.replace('_', ' ')}", v) for k, v in stages.items()]
    rows.append(("the rest (start-up, checks, writing the artifact)", run["seconds"] - sum(passes.values())))
    return "".join(f"| &nbsp;&nbsp;{name} | {v:.0f} |\n" for name, v in rows if v is not None)


def _said(run: dict) -> str:
    """What the CLI said where the budget was not met (exit 1)."""
    if not run.get("message"):
        return ""
    return f'; exit code {run["exit_code"]}, and the CLI said: "{run["message"]}"'


def markdown(r: dict) -> str:
    run, t, a = r["run"], r["per_trial"], r["args"]
    kept = ", ".join(run["kept_fp32"]) or "none"
    ranked, before = run["ranked_on_samples"] or a["eval"], r["before_estimate_s"]
    trials, stages = _old_trials(run), _stages(run)
    return f"""<!-- mixed_speed:start -->
## `--max-accuracy-drop` on EfficientNet-Lite1: time of the budgeted search

`bench/mixed_speed.py`: EfficientNet-Lite1 (published weights, bench/zoo.py), {a["calib"]} calibration
and {a["eval"]} evaluation photo crops, `edgekit compress --int8 --max-accuracy-drop {a["budget"]:g}`,
ONNX Runtime's default threads. CPU: {cpu_line(r["host"])}, {r["host"].get("cores", "?")} cores.
Load average while measured (a shared machine: other jobs ran alongside): {run["load_before"]:.1f} to
{run["load_after"]:.1f} during the whole run, {t["load_before"]:.1f} to {t["load_after"]:.1f} during the
per-trial timings; every number here is slower than on an idle machine of the same cores.

| | seconds |
|---|---:|
| whole CLI run, after (one calibration, layers ranked on {ranked} samples) | {run["seconds"]:.0f} |
{stages}| whole search, before (estimated: {trials} trials x (own calibration + evaluation)) | {before:.0f} |
| one trial calibrated for itself (before) | {t["recalibrated_trial"]:.1f} |
| the one calibration (after) | {t["calibration_once"]:.1f} |
| the first model from it (AdaRound, range search: solved once) | {t.get("first_trial", float("nan")):.1f} |
| one trial from the reused ranges and levels (after) | {t["reused_trial"]:.1f} |
| a trial's evaluation on all {a["eval"]} samples | {t["eval_all"]:.1f} |
| a trial's evaluation on the ranking subset | {t["eval_subset"]:.1f} |

The search: full INT8 drops {run["full_int8_drop_points"]:.1f} points of top-1 agreement with fp32;
{run["layers_searched"]} layers ranked; kept in fp32: {kept}; drop {run["drop_points"]:.1f} points
(budget met: {run["budget_met"]}){_said(run)}. The trials written from reused ranges are the models a
calibration of their own gives (the same scales: tests/test_mixed.py). After / before (estimated):
{run["seconds"] / before:.2f}; what is left is one trial per layer (an INT8 model written and scored
on the ranking subset) and the finalists scored on all the samples.
<!-- mixed_speed:end -->"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calib", type=int, default=100)
    p.add_argument("--eval", type=int, default=300)
    p.add_argument("--budget", type=float, default=5.0)
    p.add_argument("--work", type=Path, help="keep the photos and artifacts here (default: a temporary one)")
    p.add_argument("--rewrite", action="store_true", help="only rewrite BENCHMARKS.md from the saved results")
    args = p.parse_args()
    out = ROOT / "bench" / "results" / "mixed_speed.json"
    if args.rewrite:
        write_section("mixed_speed", markdown(json.loads(out.read_text())))
        return
    fp = host()
    print(cpu_line(fp))
    with tempfile.TemporaryDirectory(prefix="edgekit-mixedspeed-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        zoo.write_image_folder(root / "calib", args.calib, seed=0)
        zoo.write_image_folder(root / "eval", args.eval, seed=1)
        zoo.write_state_dicts(root, [MODEL])
        run = whole_run(root, args)
        print(f"whole run: {run}")
        trial = per_trial(root, args)
        print(f"per trial: {trial}")
    result = {
        "host": fp,
        "args": {"calib": args.calib, "eval": args.eval, "budget": args.budget},
        "run": run,
        "per_trial": trial,
        "before_estimate_s": estimate_before(run, trial),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    write_section("mixed_speed", markdown(result))
    print(f"before (estimated) {result['before_estimate_s']:.0f} s, after {run['seconds']:.0f} s")


if __name__ == "__main__":
    main()
