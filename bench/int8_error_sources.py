"""Where edgekit's INT8 error is on the real zoo CNNs: weights or activations, and which activations;
and how far apart two measurements of it can be.

    make zoo && .venv/bin/python bench/int8_error_sources.py [--models ...] [--eval 2000] [--work DIR]
        [--form u8s8|u8s8-pair]

For each model (bench/zoo.py: published weights, real photo crops; the artifacts of
bench/int8_cpu.py, which --work shares), edgekit's INT8 model in the form `--int8` makes for this
CPU (u8s8 where INT8 cannot saturate, u8s8-pair on AVX2; its defaults: activation equalization,
AdaRound, bias correction, the loss-aware activation ranges and the output layer's refit) is
compared with variants of itself, each run by ONNX Runtime with its graph optimizations off (the Q/DQ nodes
computed literally, so a variant without some of them is the same model otherwise):
- the fp32 weights in place of the INT8 ones (only the activations quantized; the weights as the
  quantizer saw them, after the activation equalization, whose gains the biases carry);
- the residual stream in float: the Q/DQ pairs on the convolution outputs that feed an Add, on the
  Add outputs, and on both (ORT's QLinearAdd reads and writes INT8, so an INT8 residual block
  rounds its sum twice; OpenVINO fuses the convolution and the Add and rounds once);
- every activation's rounding removed and its clipping kept (each Q/DQ pair a Clip to the range its
  levels span): what the activations' rounding costs, apart from their ranges and the weights.
Beside them, on the same crops: the same model without the activation equalization
(edgekit.compress.equalize_activations), without the loss-aware activation ranges
(edgekit.compress.range_search) and without the output layer's refit (edgekit.compress.output_fit),
NNCF PTQ in OpenVINO (the anchor, bench/int8_cpu.py's IR), and fp32 itself with every pixel moved
by uniform noise of +-1/255 and +-0.5/255 (what a JPEG re-encode or another resize does): how
fragile the crops' top-1 is, the scale INT8's agreement is read against. Beside them, the fused
model's latency over ORT fp32's (batch 1, interleaved rounds).
Top-1 agreement with fp32 on --eval crops (seed 1, their own folder: bench/int8_cpu.py's 500
crops are one draw, and another draw of 500 moved Lite1's agreement by 4 points), and the mean KL
divergence of the class probabilities from fp32's, which ranks variants more steadily. Writes
docs/BENCHMARKS.md (a section per CPU class) and bench/results/int8_error_sources-CLASS.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import zoo
from _markdown import cpu_line, write_section
from int8_cpu import _artifacts, _ort_latency, _ov_outputs, nncf_ir
from rich.console import Console
from rich.table import Table

from edgekit.artifact import read_manifest
from edgekit.benchmarks.fingerprint import host
from edgekit.data import load_samples, recorded_preprocess, split_holdout
from edgekit.pipeline import HOLDOUT
from edgekit.target_cpu import auto_form, here

ROOT = Path(__file__).resolve().parents[1]
console = Console()
VARIANTS = {
    "int8": "edgekit INT8 (FORM), Q/DQ computed literally",
    "fused": "the same in ORT's fused INT8 kernels (as deployed)",
    "float_weights": "fp32 weights (equalized), activations quantized",
    "float_conv_to_add": "convolution outputs into an Add in float",
    "float_add": "Add outputs in float",
    "float_residual": "both: the residual stream in float",
    "unrounded": "every activation's rounding removed, its clipping kept (Q/DQ as a Clip)",
    "no_equalize": "edgekit INT8 without the activation equalization (--no-equalize-activations), fused",
    "no_range_search": "edgekit INT8 without the loss-aware activation ranges (--no-range-search), fused",
    "no_output_fit": "edgekit INT8 without the output layer's refit (--no-output-fit), fused",
    "nncf": "NNCF PTQ in OpenVINO (the anchor)",
    "noise_1": "fp32, every pixel moved by uniform noise of +-1/255",
    "noise_half": "fp32, every pixel moved by uniform noise of +-0.5/255",
}


def _without_qdq(model, tensors: set[str]):
    """MODEL with the Q -> DQ pairs on TENSORS removed: their readers read the float tensor."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    nodes = list(m.graph.node)
    quantize = {
        n.output[0]: i for i, n in enumerate(nodes) if n.op_type == "QuantizeLinear" and n.input[0] in tensors
    }
    drop, rename = set(), {}
    for i, n in enumerate(nodes):
        if n.op_type == "DequantizeLinear" and n.input[0] in quantize:
            q = quantize[n.input[0]]
            rename[n.output[0]] = nodes[q].input[0]
            drop |= {i, q}
    kept = [onnx.NodeProto.FromString(n.SerializeToString()) for i, n in enumerate(nodes) if i not in drop]
    for n in kept:
        n.input[:] = [rename.get(x, x) for x in n.input]
    for o in m.graph.output:
        o.name = rename.get(o.name, o.name)
    del m.graph.node[:]
    m.graph.node.extend(kept)
    return m


def _unrounded(model):
    """MODEL with each activation's Q -> DQ pair replaced by a Clip to the range its levels span: the
    activation keeps its clipping and loses its rounding. A quantized tensor read by anything but a
    DequantizeLinear (the input a channel Pad reads, edgekit.compress.conv_channels) stays as it is."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    readers: dict[str, set[str]] = {}
    for n in m.graph.node:
        for name in n.input:
            readers.setdefault(name, set()).add(n.op_type)
    quantize = {
        n.output[0]: n
        for n in m.graph.node
        if n.op_type == "QuantizeLinear"
        and n.input[0] not in inits
        and readers.get(n.output[0]) == {"DequantizeLinear"}
    }
    nodes = []
    for n in m.graph.node:
        if n.op_type == "QuantizeLinear" and n.output[0] in quantize:
            continue
        if n.op_type == "DequantizeLinear" and n.input[0] in quantize:
            q = quantize[n.input[0]]
            scale, zero = inits[q.input[1]].astype(np.float64), inits[q.input[2]]
            levels, zero = np.iinfo(zero.dtype), zero.astype(np.float64)
            bounds = [((v - zero) * scale).astype(np.float32) for v in (levels.min, levels.max)]
            names = [f"{n.output[0]}_clip_{k}" for k in ("min", "max")]
            m.graph.initializer.extend(map(numpy_helper.from_array, bounds, names))
            nodes.append(helper.make_node("Clip", [q.input[0], *names], [n.output[0]]))
            continue
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def _balanced(fp32: Path, calib, spec, work: Path) -> Path:
    """FP32 as edgekit's quantizer saw it before rounding: ORT's pre-processing, the picture's levels
    as its first convolution's input (edgekit.compress.input_lattice: that convolution's weights
    carry the pixel step), then the activation equalization (on by default; it scales weights and
    biases, so the INT8 model's biases belong with these weights, not with the exported ones). Same
    calibration samples, same gains; kept in WORK."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edgekit.compress import input_lattice
    from edgekit.compress.equalize_activations import equalize_activations
    from edgekit.compress.quantize import Int8Config
    from edgekit.memory import budget

    out = work / "balanced.onnx"
    if out.is_file():
        return out
    cfg = Int8Config()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp, contextlib.chdir(tmp):
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32.absolute()), str(pre))
        if input_lattice.fold(pre, Path(tmp) / "levels.onnx", calib):
            pre = Path(tmp) / "levels.onnx"
        limit = budget(cfg.calib_memory)
        found = equalize_activations(pre, out, calib, spec.fixed_batch, cfg.calib_batch, limit)
        if not found["pairs"]:
            pre.replace(out)
    return out


def _float_weights(model, fp32):
    """MODEL with each quantized weight's DequantizeLinear replaced by FP32's weight of that name
    (biases, whose DequantizeLinear writes the fp32 name, stay), zero-padded to the quantized
    weight's shape where edgekit padded its input channels (edgekit.compress.conv_channels)."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    ref = {i.name: i for i in fp32.graph.initializer}
    nodes, added = [], {}
    for n in m.graph.node:
        base = n.input[0].removesuffix("_quantized") if n.op_type == "DequantizeLinear" else None
        if base and n.input[0] in inits and base in ref and n.output[0] != base and base not in inits:
            nodes.append(helper.make_node("Identity", [base], [n.output[0]]))
            w, shape = numpy_helper.to_array(ref[base]), tuple(inits[n.input[0]].dims)
            if w.shape != shape:
                w = np.pad(w, [(0, q - f) for q, f in zip(shape, w.shape, strict=True)])
            added[base] = numpy_helper.from_array(w, base)
            continue
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    m.graph.initializer.extend(added.values())
    return m


def _residual(fp32) -> tuple[set[str], set[str]]:
    """The fp32 graph's convolution outputs read by an Add, and its Add outputs (activations)."""
    producer = {o: n.op_type for n in fp32.graph.node for o in n.output}
    consts = {i.name for i in fp32.graph.initializer}
    adds = [n for n in fp32.graph.node if n.op_type == "Add" and not set(n.input) & consts]
    into = {i for n in adds for i in n.input if producer.get(i) == "Conv"}
    return into, {n.output[0] for n in adds}


def _kl(ref: np.ndarray, out: np.ndarray) -> float:
    """Mean KL divergence of OUT's class probabilities from REF's: a continuous measure of the same
    loss, far steadier than top-1 agreement, which flips on the crops whose top two classes are close."""

    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lr = log_softmax(ref.astype(np.float64))
    return float((np.exp(lr) * (lr - log_softmax(out.astype(np.float64)))).sum(1).mean())


def _outputs(model, x: np.ndarray, literal: bool = False) -> np.ndarray:
    """MODEL's first output on X in ONNX Runtime (LITERAL: graph optimizations off)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if literal:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + 32]})[0] for i in range(0, len(x), 32)])


def measure(name: str, args, root: Path) -> dict:
    import onnx

    form = args.form
    forms = [form, f"{form}-norangesearch", f"{form}-noequalize", f"{form}-nooutputfit"]
    paths = _artifacts(name, root / name, root / "calib", args.calib, forms)
    manifest = read_manifest(paths["fp32"])
    spec, pre = manifest.input_spec, recorded_preprocess(manifest)
    x = load_samples(str(root / f"eval{args.eval}"), spec, args.eval, pre, 0, "eval").inputs[spec.names[0]]
    fp32, int8 = (onnx.load(str(paths[k] / "model.onnx")) for k in ("fp32", form))
    ref = _outputs(fp32, x)
    top1 = ref.argmax(1)
    ir = nncf_ir(paths["fp32"], root / "calib", args.calib)
    # the samples edgekit calibrated on: --calib-size of them, the rest held out (edgekit.pipeline)
    drawn = load_samples(str(root / "calib"), spec, args.calib + HOLDOUT, pre, 0, "calib")
    balanced = onnx.load(
        str(_balanced(paths["fp32"] / "model.onnx", split_holdout(drawn, args.calib)[0], spec, root / name))
    )
    # a pixel step in the model's input units: 1/255 over each channel's std (the recorded preprocess)
    step = (1 / 255 / np.asarray(pre.std, np.float32)).reshape(1, -1, 1, 1)
    rng = np.random.default_rng(0)
    noisy = {
        k: x + (rng.uniform(-a, a, x.shape) * step).astype(np.float32)
        for k, a in (("noise_1", 1), ("noise_half", 0.5))
    }
    into, out = _residual(fp32)
    models = {
        "int8": int8,
        "fused": int8,
        "float_weights": _float_weights(int8, balanced),
        "float_conv_to_add": _without_qdq(int8, into),
        "float_add": _without_qdq(int8, out),
        "float_residual": _without_qdq(int8, into | out),
        "unrounded": _unrounded(int8),
    }
    outs = {k: _outputs(m, x, k != "fused") for k, m in models.items()}
    for key, suffix in (
        ("no_range_search", "-norangesearch"),
        ("no_equalize", "-noequalize"),
        ("no_output_fit", "-nooutputfit"),
    ):
        outs[key] = _outputs(onnx.load(str(paths[form + suffix] / "model.onnx")), x)
    outs["nncf"] = _ov_outputs(ir, x)
    outs.update({k: _outputs(fp32, v) for k, v in noisy.items()})
    rows = {k: float((o.argmax(1) == top1).mean()) for k, o in outs.items()}
    kl = {k: _kl(ref, o) for k, o in outs.items()}
    summary = read_manifest(paths[form]).passes[-1].summary
    search = summary.get("range_search", {})
    ms = _ort_latency({k: paths[k] / "model.onnx" for k in ("fp32", form)}, x, args.rounds, 2)
    console.print(f"{name}: {rows}, ms {ms}")
    residual = [len(into), len(out)]
    return {
        "model": name,
        "form": form,
        "eval": len(x),
        "calib": args.calib,
        "ort_ms": {"fp32": ms["fp32"], "int8": ms[form]},
        "residual_tensors": residual,
        "range_search_record": search,
        "output_fit_record": summary.get("output_fit", {}),
        "kl": kl,
        **rows,
    }


def _measured(name: str, args, root: Path) -> dict:
    """measure's result, kept in the work directory: a rerun with --work measures only what is new."""
    kept = root / name / f"error_sources-{args.form}-{args.calib}-{args.eval}.json"
    if not kept.is_file():
        kept.write_text(json.dumps(measure(name, args, root)))
    return json.loads(kept.read_text())


def _cell(result: dict, key: str) -> str:
    return f"{100 * result[key]:.1f} % / {result['kl'][key]:.4f}"


def _latency(result: dict) -> str:
    ms = result["ort_ms"]
    return f"{ms['int8'] / ms['fp32']:.2f}x ({ms['int8']:.2f} / {ms['fp32']:.2f} ms)"


def markdown(results: list[dict], args, fp: dict) -> str:
    cls, form = fp.get("cpu_class", "unknown"), results[0]["form"]
    lines = [
        f"<!-- int8_error_sources-{cls}:start -->",
        f"## Where the INT8 error is on a {cls} CPU: weights or activations, the residual stream (issue 14)",
        "",
        f"`make zoo && .venv/bin/python bench/int8_error_sources.py --calib {args.calib} "
        f"--eval {args.eval} --form {form}`, "
        f"{time.strftime('%Y-%m-%d')}. CPU: {cpu_line(fp)}",
        "",
        f"edgekit's INT8 model in the form `--int8` makes for this CPU ({form}; its defaults: activation "
        "equalization, AdaRound, bias correction, "
        "the loss-aware activation ranges and the output layer's refit on; the "
        "artifact of bench/int8_cpu.py) against variants of itself, run by ONNX Runtime with its graph "
        "optimizations off (the Q/DQ nodes computed literally, so a variant lacks only what it names) "
        "unless the row says fused; beside them, on the same crops, the model without the activation "
        "equalization, without the loss-aware activation ranges and without the output layer's refit, "
        "NNCF, and fp32 itself under one pixel level of noise (how fragile the crops' top-1 is). Top-1 "
        f"agreement with fp32 on {results[0]['eval']} held-out photo crops (bench/zoo.py, seed 1); "
        "at 90 % a 95 % interval is about +-"
        f"{100 * 1.96 * (0.09 / results[0]['eval']) ** 0.5:.1f} points. After the slash, the mean KL "
        "divergence of the class probabilities from fp32's (lower is better): the same loss measured "
        "on every crop, not only on those whose top-1 flips, so it ranks variants where agreement "
        "moves by noise (MobileNetV2's fused and literal runs of one model differ by 1.5 points).",
        "",
        "| variant | " + " | ".join(f"{r['model']} ({r['eval']} crops)" for r in results) + " |",
        "|---" + "|---:" * len(results) + "|",
    ]
    for k, label in VARIANTS.items():
        lines.append(f"| {label.replace('FORM', form)} | " + " | ".join(_cell(r, k) for r in results) + " |")
    lines += [
        "",
        "Latency, the fused INT8 model over ORT fp32 (batch 1, 2 threads, interleaved rounds, median of "
        "round medians): " + ", ".join(f"{r['model']} {_latency(r)}" for r in results) + ".",
        "",
        "Residual tensors (convolution outputs into an Add / Add outputs): "
        + ", ".join(f"{r['model']} {r['residual_tensors'][0]} / {r['residual_tensors'][1]}" for r in results)
        + ".",
        "",
        "The range search's record (activations, scaled, output error on the search samples and on the "
        "held-out calibration samples, seconds): "
        + "; ".join(f"{r['model']} {r['range_search_record']}" for r in results)
        + ".",
        "",
        "The output layer's refit (error on the held-out calibration samples before and after, the "
        "ridge chosen): "
        + "; ".join(f"{r['model']} {r.get('output_fit_record', {})}" for r in results)
        + ".",
        f"<!-- int8_error_sources-{cls}:end -->",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_lite1,mobilenet_v2,efficientnet_lite2")
    p.add_argument("--calib", type=int, default=200)
    p.add_argument("--eval", type=int, default=2000)
    p.add_argument("--form", help="the INT8 form measured (default: the one --int8 makes for this CPU)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    p.add_argument(
        "--work", type=Path, help="keep the artifacts and each model's rows here (int8_cpu.py's --work too)"
    )
    args = p.parse_args()
    args.form = args.form or auto_form(here())
    fp = host()
    with tempfile.TemporaryDirectory(prefix="edgekit-int8err-") as tmp:
        root = args.work or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        if not (root / "calib").is_dir():
            zoo.write_image_folder(root / "calib", args.calib, seed=0)
        if not (root / f"eval{args.eval}").is_dir():
            zoo.write_image_folder(root / f"eval{args.eval}", args.eval, seed=1)
        results = [_measured(name, args, root) for name in args.models.split(",")]
    t = Table(title=f"top-1 agreement with fp32 / mean KL divergence ({fp.get('cpu_class')}, {args.form})")
    t.add_column("variant")
    for r in results:
        t.add_column(r["model"], justify="right")
    for k, label in VARIANTS.items():
        t.add_row(label.replace("FORM", args.form), *(_cell(r, k) for r in results))
    t.add_row("latency x ORT fp32", *(_latency(r) for r in results))
    console.print(t)
    out = ROOT / "bench" / "results" / f"int8_error_sources-{fp.get('cpu_class')}.json"
    out.write_text(json.dumps({"host": fp, "results": results}, indent=2) + "\n")
    write_section(f"int8_error_sources-{fp.get('cpu_class')}", markdown(results, args, fp))
    console.print(f"wrote {out} and docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
