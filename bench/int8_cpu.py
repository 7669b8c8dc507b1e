"""Issue 10's numbers: which INT8 form holds on which CPU, on real pretrained ImageNet networks.

    make zoo && .venv/bin/python bench/int8_cpu.py [--models efficientnet_lite1,...] [--eval 500]
        [--emulated 100] [--rounds 5] [--threads 2]

For MobileNetV2 and EfficientNet-Lite1/2 (bench/zoo.py: the published weights) on real photo crops
(calibration and evaluation crops drawn from different seeds), each INT8 variant is compared with
the fp32 model:
- top-1 agreement on this machine's CPU, and on an AVX2-only CPU emulated by qemu (the worker of
  `edgekit bench --emulate-cpu x86-avx2`; its outputs are that CPU's, saturation included);
- latency in ONNX Runtime on this CPU against ORT fp32 (one process, interleaved rounds, ratios);
- latency in OpenVINO on its AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2: the instructions an AVX2-only
  CPU runs) against OpenVINO fp32 on the same kernels, in one process, interleaved.
Variants: edgekit's form for x86-vnni and for x86-avx2 (what `--int8` makes there), both also with
AdaRound off, the other forms (full sweep on Lite1), ORT `quantize_static` defaults and NNCF PTQ ->
OpenVINO, both anchors calibrated on the same crops. Writes docs/BENCHMARKS.md (its section) and
bench/results/int8_cpu.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo
from _markdown import write_section
from rich.console import Console
from rich.table import Table

from edgekit.artifact import read_manifest
from edgekit.benchmarks.fingerprint import host
from edgekit.benchmarks.metrics import interleaved_medians
from edgekit.compress.quantize import Int8Config
from edgekit.data import Preprocess, load_samples, recorded_preprocess
from edgekit.floors import NO_FLOORS
from edgekit.model import LoadOptions
from edgekit.passes import from_flags
from edgekit.pipeline import CompressRequest, compress

ROOT = Path(__file__).resolve().parents[1]
console = Console()
# a variant NAME-noadaround is the form NAME with AdaRound off (nearest rounding; Int8Config.adaround),
# NAME-norangesearch the form without the loss-aware activation ranges (Int8Config.range_search),
# NAME-noequalize the form without the activation equalization (Int8Config.equalize_activations)
FORMS_SHORT = ["u8s8", "u8s8-noadaround", "u8s8-pair", "u8s8-pair-noadaround", "u8s8-w7"]
FORMS_ALL = [*FORMS_SHORT, "u8s8-w7all", "u8s8-w7first", "u8u8", "s8s8"]
LABEL = {
    "u8s8": "edgekit for x86-vnni/amx (u8s8)",
    "u8s8-noadaround": "the same, AdaRound off",
    "u8s8-pair": "edgekit for x86-avx2 (u8s8-pair)",
    "u8s8-pair-noadaround": "the same, AdaRound off",
    "u8s8-w7": "form u8s8-w7 (7-bit weights but depthwise)",
    "u8s8-w7all": "form u8s8-w7all (ORT reduce_range)",
    "u8s8-w7first": "form u8s8-w7first (first layer 7-bit)",
    "u8u8": "form u8u8",
    "s8s8": "form s8s8",
    "ort-defaults": "ORT quantize_static defaults",
    "nncf": "NNCF PTQ -> OpenVINO",
}


def _artifacts(name: str, work: Path, calib_dir: Path, calib_n: int, forms: list[str]) -> dict[str, Path]:
    """fp32 and one INT8 artifact per form, made by edgekit's pipeline from the zoo state_dict."""
    m = zoo.MODELS[name]
    pt = zoo.write_state_dicts(work, [name])[name]
    base = CompressRequest(
        model=pt,
        out=work / "fp32",
        load=LoadOptions(arch=f"bench.zoo:{name}", input_shapes=((1, 3, m.size, m.size),)),
        calib=str(calib_dir),
        calib_size=calib_n,
        preprocess=Preprocess(resize=m.resize, mean=tuple(m.mean), std=tuple(m.std)),
        force=True,
        min_fidelity=NO_FLOORS,  # forms that saturate are measured on purpose: reported, not floored
    )
    if not (work / "fp32" / "edgekit.json").is_file():
        compress(base)
    out = {"fp32": work / "fp32"}
    for form in forms:
        out[form] = work / form
        if (out[form] / "edgekit.json").is_file():  # --work keeps artifacts between runs
            continue
        # the form by name; the target recorded is the class it is made for (u8s8: a VNNI CPU)
        name = form
        for suffix in ("-noadaround", "-norangesearch", "-noequalize", "-nooutputfit"):
            name = name.removesuffix(suffix)
        target = "x86-avx2" if name != "u8s8" else "x86-vnni"
        adaround, ranges = not form.endswith("-noadaround"), not form.endswith("-norangesearch")
        cfg = Int8Config(
            form=name,
            target_cpu=target,
            adaround=adaround,
            range_search=ranges,
            equalize_activations=not form.endswith("-noequalize"),
            output_fit=not form.endswith("-nooutputfit"),
        )
        compress(dataclasses.replace(base, out=out[form], chain=from_flags(int8=cfg)))
    return out


def _ort_defaults(fp32: Path, calib: dict[str, np.ndarray], out: Path) -> Path:
    """The anchor: ORT's quantize_static with every default (QDQ, s8 x s8, per-tensor, MinMax)."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            n = len(next(iter(calib.values())))
            self.it = iter([{k: v[i : i + 1] for k, v in calib.items()} for i in range(n)])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32), str(out), Reader())
    return out


def _nncf(fp32: Path, calib: dict[str, np.ndarray], out: Path) -> Path:
    """The anchor: NNCF PTQ with its defaults on the same crops, saved as OpenVINO IR."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32))
    items = [{k: v[i : i + 1] for k, v in calib.items()} for i in range(len(next(iter(calib.values()))))]
    q = nncf.quantize(model, nncf.Dataset(items), subset_size=len(items))
    ov.save_model(q, str(out), compress_to_fp16=False)
    return out


def nncf_ir(fp32: Path, calib_dir: Path, calib_n: int) -> Path:
    """NNCF's IR of the fp32 artifact FP32 (a folder), beside it as nncf.xml, made once: calibrated on
    the first CALIB_N crops of CALIB_DIR as edgekit reads them."""
    ir = fp32.parent / "nncf.xml"
    if not ir.is_file():
        manifest = read_manifest(fp32)
        spec, pre = manifest.input_spec, recorded_preprocess(manifest)
        _nncf(fp32 / "model.onnx", load_samples(str(calib_dir), spec, calib_n, pre, 0, "calib").inputs, ir)
    return ir


def _ort_outputs(path: Path, x: np.ndarray, threads: int) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def _ov_outputs(path: Path, x: np.ndarray) -> np.ndarray:
    import openvino as ov

    c = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    return np.concatenate([c(x[i : i + 1])[0] for i in range(len(x))])


def _emulated(path: Path, runtime: str, name: str, x: np.ndarray, work: Path) -> np.ndarray:
    """Outputs as an AVX2-only CPU computes them: edgekit's bench worker under qemu."""
    from edgekit.benchmarks.runner import _worker
    from edgekit.target_cpu import emulator

    np.savez(work / "feeds.npz", **{name: x[:1]})
    np.savez(work / "eval_in.npz", **{name: x})
    job = {
        "runtime": runtime,
        "model": str(path),
        "options": {"threads": 0, **({"precision": "f32"} if runtime == "openvino" else {})},
        "warmup": 0,
        "runs": 1,
        "feeds": str(work / "feeds.npz"),
        "eval_inputs": str(work / "eval_in.npz"),
        "eval_outputs": str(work / "eval_out.npz"),
        "eval_batch": 16 if runtime == "ort" else 1,
    }
    result = _worker(job, 3600, emulator("x86-avx2"))
    if not result.get("ok"):
        raise RuntimeError(f"emulated run of {path} failed: {result.get('error')}")
    with np.load(work / "eval_out.npz") as z:
        return z[z.files[0]]


def _agree(ref: np.ndarray, out: np.ndarray) -> float:
    return float((ref.argmax(1) == out.argmax(1)).mean())


def _ort_latency(paths: dict[str, Path], x: np.ndarray, rounds: int, threads: int) -> dict[str, float]:
    """Median of round medians (ms), ORT, batch 1, the variants interleaved in one process."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    runners = {}
    for k, p in paths.items():
        sess = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x[:1]}
        runners[k] = lambda s=sess, f=feed: s.run(None, f)
    medians = interleaved_medians(runners, rounds, runs=60)
    return {k: float(np.median(v)) for k, v in medians.items()}


def _ov_latency(paths: dict[str, Path], size: int, rounds: int, threads: int, isa: str | None) -> dict:
    """OpenVINO in a child process, the variants interleaved in it: on its AVX2 kernels where ISA is
    "AVX2" (ONEDNN_MAX_CPU_ISA), on this CPU's where None; also the kernels OpenVINO picked (to show
    the cap took effect)."""
    env = dict(os.environ, **({"ONEDNN_MAX_CPU_ISA": isa} if isa else {}))
    job = {"paths": {k: str(v) for k, v in paths.items()}, "size": size, "rounds": rounds, "threads": threads}
    proc = subprocess.run(
        [sys.executable, __file__, "--ov-child", json.dumps(job)], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"OpenVINO timing ({isa or 'native'}) failed: {proc.stderr.strip().splitlines()[-1:]}"
        )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ov_child(job: dict) -> None:
    import collections

    import openvino as ov

    core = ov.Core()
    x = np.random.default_rng(0).random((1, 3, job["size"], job["size"]), dtype=np.float32)
    runners, kernels = {}, collections.Counter()
    for k, p in job["paths"].items():
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": job["threads"]}
        compiled = core.compile_model(p, "CPU", config)
        types = (
            op.get_rt_info()["primitiveType"].astype(str) for op in compiled.get_runtime_model().get_ops()
        )
        kernels.update(t for t in types if "conv" in t or "_I8" in t)
        req = compiled.create_infer_request()
        runners[k] = lambda r=req: r.infer([x])
    medians = interleaved_medians(runners, job["rounds"], runs=60)
    out = {k: float(np.median(v)) for k, v in medians.items()}
    out["_kernels"] = sorted(kernels)
    print(json.dumps(out))


def measure(name: str, args, root: Path) -> dict:
    m = zoo.MODELS[name]
    work = root / name
    work.mkdir(parents=True, exist_ok=True)
    calib_dir, eval_dir = root / "calib", root / "eval"
    forms = FORMS_ALL if name == args.full_sweep else FORMS_SHORT
    t0 = time.perf_counter()
    paths = _artifacts(name, work, calib_dir, args.calib, forms)
    console.print(f"{name}: artifacts in {time.perf_counter() - t0:.0f} s")
    manifest = read_manifest(paths["fp32"])
    spec, pre = manifest.input_spec, recorded_preprocess(manifest)
    calib = load_samples(str(calib_dir), spec, args.calib, pre, 0, "calib").inputs
    x = load_samples(str(eval_dir), spec, args.eval, pre, 0, "eval").inputs[spec.names[0]]
    onnx = {k: p / "model.onnx" for k, p in paths.items()}
    onnx["ort-defaults"] = _ort_defaults(onnx["fp32"], calib, work / "ort_defaults.onnx")
    ir = {"fp32": onnx["fp32"], "nncf": _nncf(onnx["fp32"], calib, work / "nncf.xml")}
    ir.update({k: onnx[k] for k in ("u8s8", "u8s8-pair", "u8s8-w7")})
    ref = _ort_outputs(onnx["fp32"], x, args.threads)
    ref_emulated = ref[: args.emulated]
    rows: dict[str, dict] = {}
    for k, p in onnx.items():
        if k == "fp32":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            # s8 activations run an order of magnitude slower under the emulator: fewer crops
            n = args.emulated if k not in ("ort-defaults", "s8s8") else min(args.emulated, args.emulated_s8)
            emu = _emulated(p, "ort", spec.names[0], x[:n], Path(tmp))
        rows[k] = {
            "agreement_here": _agree(ref, _ort_outputs(p, x, args.threads)),
            "agreement_avx2": _agree(ref_emulated[:n], emu),
            "emulated_n": n,
        }
        console.print(f"{name} {k}: {rows[k]}")
    for k in ("u8s8", "u8s8-pair"):  # the same QDQ files run by OpenVINO, here and on the emulated AVX2 CPU
        rows[k]["agreement_here_openvino"] = _agree(ref, _ov_outputs(onnx[k], x))
        with tempfile.TemporaryDirectory() as tmp:
            emu = _emulated(onnx[k], "openvino", spec.names[0], x[: args.emulated], Path(tmp))
        rows[k]["agreement_avx2_openvino"] = _agree(ref_emulated, emu)
    with tempfile.TemporaryDirectory() as tmp:
        emu = _emulated(ir["nncf"], "openvino", spec.names[0], x[: args.emulated], Path(tmp))
    rows["nncf"] = {  # in OpenVINO, the only runtime NNCF's IR runs in (_cells)
        "agreement_here": _agree(ref, _ov_outputs(ir["nncf"], x)),
        "agreement_avx2": _agree(ref_emulated, emu),
        "agreement_avx2_openvino": _agree(ref_emulated, emu),
    }
    console.print(f"{name} nncf: {rows['nncf']}")
    ort_ms = _ort_latency(onnx, x, args.rounds, args.threads)
    ov_ms = _ov_latency(ir, m.size, args.rounds, args.threads, "AVX2")
    ov_here_ms = _ov_latency(ir, m.size, args.rounds, args.threads, None)
    for k, r in rows.items():
        if k in ort_ms:
            r["ort_ms"], r["ort_speedup"] = ort_ms[k], ort_ms["fp32"] / ort_ms[k]
        if k in ov_ms:
            r["ov_avx2_ms"], r["ov_avx2_speedup"] = ov_ms[k], ov_ms["fp32"] / ov_ms[k]
            r["ov_here_ms"], r["ov_here_speedup"] = ov_here_ms[k], ov_here_ms["fp32"] / ov_here_ms[k]
    return {
        "model": name,
        "input": m.size,
        "eval": len(x),
        "emulated": len(ref_emulated),
        "calib": args.calib,
        "ort_fp32_ms": ort_ms["fp32"],
        "ov_avx2_fp32_ms": ov_ms["fp32"],
        "ov_here_fp32_ms": ov_here_ms["fp32"],
        "ov_avx2_kernels": ov_ms["_kernels"],
        "rows": rows,
    }


def _pct(x):
    return f"{100 * x:.1f} %"


def _n(row: dict, result: dict) -> str:
    """The crop count of an emulated cell where it is not the table's."""
    n = row.get("emulated_n", result["emulated"])
    return "" if n == result["emulated"] else f" (n={n})"


def _opt_pct(r, key):
    return _pct(r[key]) if key in r else "—"


def _x(r, key):
    return f"{r[key]:.2f}x" if key in r else "—"


COLUMNS = (
    "variant",
    "here: ORT",
    "here: OpenVINO",
    "AVX2 (emulated): ORT",
    "AVX2 (emulated): OpenVINO",
    "ORT × fp32 here",
    "OpenVINO × fp32 here",
    "OpenVINO AVX2 kernels × fp32",
)


def _cells(k: str, row: dict, result: dict) -> list[str]:
    """One variant's row under COLUMNS: NNCF's IR runs in OpenVINO only."""
    nncf = k == "nncf"
    return [
        LABEL[k],
        "—" if nncf else _pct(row["agreement_here"]),
        _pct(row["agreement_here"]) if nncf else _opt_pct(row, "agreement_here_openvino"),
        "—" if nncf else _pct(row["agreement_avx2"]) + _n(row, result),
        _opt_pct(row, "agreement_avx2_openvino"),
        _x(row, "ort_speedup"),
        _x(row, "ov_here_speedup"),
        _x(row, "ov_avx2_speedup"),
    ]


def show(result: dict) -> None:
    t = Table(title=f"{result['model']} ({result['input']}x{result['input']})", title_justify="left")
    for col in COLUMNS:
        t.add_column(col, justify="left" if col == "variant" else "right")
    for k, r in result["rows"].items():
        t.add_row(*_cells(k, r, result))
    console.print(t)


def markdown(results: list[dict], args, fp: dict) -> str:
    lines = [
        "<!-- int8_cpu:start -->",
        "## INT8 form per target CPU, real pretrained networks (issue 10)",
        "",
        f"`make zoo && .venv/bin/python bench/int8_cpu.py --full-sweep {args.full_sweep} "
        f"--calib {args.calib} --eval {args.eval} --emulated {args.emulated} --rounds {args.rounds} "
        f"--threads {args.threads}`, "
        f"{time.strftime('%Y-%m-%d')}, on "
        f"{fp['cpu']} ({fp['cores']} cores), class **{fp['cpu_class']}**, "
        f"flags: {', '.join(fp['cpu_flags'])}; " + ", ".join(f"{k} {v}" for k, v in fp["libraries"].items()),
        "",
        "Top-1 agreement with the fp32 model on real photo crops (bench/zoo.py; calibration and evaluation "
        "crops from different seeds): *here* on this CPU, and *on AVX2*: the same ONNX Runtime / "
        "OpenVINO run under qemu's EPYC-Milan (Zen 3: AVX2, no AVX-512/VNNI) model, which computes what "
        "that CPU computes, INT8 saturation included, on the first evaluation crops. Speed: ORT "
        "INT8 vs ORT fp32 on this CPU (batch 1, interleaved rounds, median of round medians); OpenVINO "
        "on its AVX2 kernels (`ONEDNN_MAX_CPU_ISA=AVX2`, the instructions an AVX2-only CPU runs) vs "
        "OpenVINO fp32 on the same kernels. ORT has no such switch, so ORT's speed on an AVX2 CPU is "
        "not measured here: `u8s8-pair` runs the very kernels of `u8s8` (only the weight values "
        "differ), which ran 1.8-2.0x ORT fp32 on the Zen 3 of FIELD-NOTES. OpenVINO's AVX2 run keeps "
        "a few non-convolution int8 kernels at AVX-512 (listed): the convolutions are AVX2's.",
        "",
    ]
    for r in results:
        lines += [
            f"### {r['model']} ({r['input']}x{r['input']}), {r['eval']} crops here, "
            f"{r['emulated']} emulated, {r['calib']} calibration crops",
            "",
            f"ORT fp32 {r['ort_fp32_ms']:.2f} ms here; OpenVINO fp32 "
            + (f"{r['ov_here_fp32_ms']:.2f} ms here and " if "ov_here_fp32_ms" in r else "")
            + f"{r['ov_avx2_fp32_ms']:.2f} ms on AVX2 kernels (kernels: {', '.join(r['ov_avx2_kernels'])}).",
            "",
            "| " + " | ".join(COLUMNS) + " |",
            "|---" + "|---:" * (len(COLUMNS) - 1) + "|",
        ]
        lines += ["| " + " | ".join(_cells(k, row, r)) + " |" for k, row in r["rows"].items()]
        lines.append("")
    lines.append("<!-- int8_cpu:end -->")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--ov-child":
        _ov_child(json.loads(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_lite1,mobilenet_v2,efficientnet_lite2")
    p.add_argument("--full-sweep", default="efficientnet_lite1", help="the model every form is measured on")
    p.add_argument("--calib", type=int, default=200)
    p.add_argument("--eval", type=int, default=500)
    p.add_argument("--emulated", type=int, default=100, help="evaluation crops run under the emulator")
    p.add_argument(
        "--emulated-s8", type=int, default=16, help="... for the s8-activation variants (slow there)"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, help="keep the artifacts here (default: a temporary directory)")
    p.add_argument("--rewrite", action="store_true", help="only rewrite BENCHMARKS.md from the saved results")
    args = p.parse_args()
    fp = host()
    if args.rewrite:
        saved = json.loads((ROOT / "bench" / "results" / "int8_cpu.json").read_text())
        write_section("int8_cpu", markdown(saved["results"], args, saved["host"]))
        return
    console.print(f"CPU: {fp['cpu']}, class {fp['cpu_class']}, flags {', '.join(fp['cpu_flags'])}")
    with tempfile.TemporaryDirectory(prefix="edgekit-int8cpu-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        zoo.write_image_folder(root / "calib", args.calib, seed=0)
        zoo.write_image_folder(root / "eval", args.eval, seed=1)
        for name in args.models.split(","):
            result = measure(name, args, root)
            show(result)
            _save(result, args, fp)


def _save(result: dict, args, fp: dict) -> None:
    """Add RESULT to bench/results/int8_cpu.json (replacing that model's earlier result from the
    same CPU; a result from another CPU is dropped) and rewrite the BENCHMARKS.md section: a
    model can be re-measured alone with --models."""
    out = ROOT / "bench" / "results" / "int8_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(out.read_text()) if out.is_file() else {}
    same_cpu = (
        old.get("host", {}).get("cpu") == fp["cpu"]
        and old.get("host", {}).get("cpu_flags") == fp["cpu_flags"]
    )
    results = [r for r in old.get("results", []) if same_cpu and r["model"] != result["model"]] + [result]
    out.write_text(json.dumps({"host": fp, "results": results}, indent=2) + "\n")
    write_section("int8_cpu", markdown(results, args, fp))
    console.print(f"wrote {out} and docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
