"""The other INT8 of a transformer: ONNX Runtime's dynamic quantization of its MatMuls (per-channel
int8 weights, each activation quantized with its own range at run time, `quantize_dynamic`).

edgekit's static recipe (edgekit.compress.smooth) is the default. What edgekit adds to ORT's
quantizer is the choice, measured: the dynamic model replaces the static one where, on this
machine, it runs in at most FASTER of the static model's time and keeps each output's main
fidelity within TOLERANCE of the static model's. all-MiniLM-L6-v2 on an AMX Xeon: static cosine
0.997 at 0.48x fp32's latency, dynamic per-channel 0.993 at 0.43x, per-tensor 0.961 at 0.34x
(docs/guide/quantize.md).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgekit.benchmarks.metrics import MAIN
from edgekit.compress import fused_attention
from edgekit.errors import EdgekitError, first_line

FASTER = 0.9  # the dynamic model's time / the static model's, at most
TOLERANCE = 0.005  # the most a fraction-valued main metric (or top-1 with labels) may lose
SQNR_TOLERANCE_DB = 3.0  # ... and an output without one, in SQNR


def quantize(fp32: Path, out: Path, seven_bit: bool = False, attention: bool = True) -> None:
    """OUT: FP32 with its MatMuls dynamically quantized (ORT's pre-processing first, in a temp dir:
    its symbolic shape inference leaves files in the working directory where it gives up); with
    SEVEN_BIT weights (ORT's reduce_range) for a CPU whose u8 x s8 pair sums saturate (no VNNI):
    ORT's dynamic MatMul is u8 x s8 as its static one is (edgekit.target_cpu). ATTENTION: ORT's
    fused Attention ops as QAttention too (edgekit.compress.fused_attention)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32, out = Path(fp32).absolute(), Path(out).absolute()  # before the chdir
    with tempfile.TemporaryDirectory(prefix="edgekit-dyn-") as tmp, contextlib.chdir(tmp):
        pre = Path(tmp) / "pre.onnx"
        try:
            quant_pre_process(str(fp32), str(pre))
        except Exception:  # symbolic shape inference does not know every op
            quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_dynamic(
            str(pre),
            str(out),
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            reduce_range=seven_bit,
            weight_type=QuantType.QInt8,
        )
    if attention:
        fused_attention.quantize(out, (), 7 if seven_bit else 8)


def summarize(path: Path) -> dict:
    """The dynamic model's integer ops by type: what replaces the static summary's Q/DQ counts."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = [
        n.op_type
        for n in graph.node
        if "Integer" in n.op_type or n.op_type.startswith("DynamicQuantize") or n.op_type == "QAttention"
    ]
    return {"integer_ops": {op: ops.count(op) for op in sorted(set(ops))}}


def shortfall(static: dict, dynamic: dict) -> str | None:
    """Where the DYNAMIC model's verification (an edgekit.evaluate.Quality) is less faithful than
    the STATIC one's by more than the tolerances, in words; None where it is not."""
    if "top1" in static and "top1" in dynamic and dynamic["top1"] < static["top1"] - TOLERANCE:
        return f"top-1 {dynamic['top1']:.4f} vs {static['top1']:.4f}"
    for name, s in static.get("fidelity", {}).items():
        d = dynamic.get("fidelity", {}).get(name)
        if not isinstance(s, dict) or not isinstance(d, dict):
            continue
        key = MAIN.get(s.get("kind", ""), ("sqnr_db",))[0]
        if key != "sqnr_db" and key in s and d.get(key, 0.0) < s[key] - TOLERANCE:
            return f"{s.get('name', name)} {MAIN[s['kind']][1]} {d.get(key, 0.0):.4f} vs {s[key]:.4f}"
        if key == "sqnr_db" and d["sqnr_db"] < s["sqnr_db"] - SQNR_TOLERANCE_DB:
            return f"{s.get('name', name)} SQNR {d['sqnr_db']:.1f} vs {s['sqnr_db']:.1f} dB"
    return None


def consider(
    fp32: Path,
    static: Path,
    static_quality: dict,
    mode: str,
    verify: Callable[[Path], dict],
    timing: Callable[[Path, Path], dict] | None,
    seven_bit: bool = False,
    attention: bool = True,
) -> tuple[dict, dict]:
    """The verification of the model now at STATIC, and the record of the choice: with MODE "auto"
    the dynamic quantization of FP32 replaces STATIC where it is as faithful (VERIFY: a model's
    Quality) and faster (TIMING(static, dynamic): edgekit.speedup's record; None where this
    machine is not the target, and the static model stays); "always" takes it regardless.
    SEVEN_BIT: the target CPU's u8 x s8 products saturate; ATTENTION: fused Attention ops as
    QAttention too (`quantize`)."""

    def make(path: Path) -> None:
        quantize(fp32, path, seven_bit, attention)

    quality, record, chosen = choose(make, static, static_quality, mode, verify, timing, "MatMul")
    if "dynamic_candidate" in record:
        record["dynamic_candidate"]["seven_bit_weights"] = seven_bit
    recipe = "dynamic MatMul (ONNX Runtime quantize_dynamic)" if chosen else "static (SmoothQuant)"
    return quality, {**record, "recipe": recipe}


def choose(
    make: Callable[[Path], None],
    static: Path,
    static_quality: dict | None,
    mode: str,
    verify: Callable[[Path], dict],
    timing: Callable[[Path, Path], dict] | None,
    what: str,
) -> tuple[dict | None, dict, bool]:
    """(quality, record, chosen): the candidate MAKE writes replaces the model at STATIC where MODE
    is "always", or "auto" and it is within the tolerances of STATIC_QUALITY (None: there is no
    other INT8 to be as faithful as) and faster by TIMING (None: the target CPU's kernels cannot
    be timed here, so only a model with no other INT8 takes it). WHAT names the ops for the record."""
    candidate = static.with_name(f"dynamic_{what.lower()}.onnx")
    try:
        make(candidate)
        quality = verify(candidate)
    except Exception as e:  # ORT's dynamic quantizer or runtime refuses this graph: static stays
        candidate.unlink(missing_ok=True)
        if mode == "always":
            raise EdgekitError(f"dynamic {what} quantization failed: {first_line(e)}") from None
        return static_quality, {"why_not_dynamic": f"failed: {first_line(e)}"}, False
    record = {"dynamic_candidate": {"fidelity": quality.get("fidelity"), "top1": quality.get("top1")}}
    why = None
    if mode == "auto":
        why = shortfall(static_quality, quality) if static_quality is not None else None
        if why is None and timing is None and static_quality is not None:
            why = "the target CPU's kernels cannot be timed here (a class above this CPU's, or not shown)"
        if why is None and timing is not None:
            speed = timing(static, candidate)
            record["dynamic_candidate"]["time_vs_static"] = speed["ratio"]
            if speed["ratio"] > FASTER:
                other = "fp32" if static_quality is None else "static"
                why = f"{speed['ratio']:.2f}x the {other} model's time here (at most {FASTER} chosen)"
    if why is not None:
        candidate.unlink()
        return static_quality, {**record, "why_not_dynamic": why}, False
    candidate.replace(static)
    return quality, record, True
