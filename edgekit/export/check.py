"""Pre-flight: will this ONNX model run on a target (ort, openvino, tensorrt) at a precision?

Each finding names the op, the ONNX node and, for models exported from torch by edgekit, the torch
module it came from (the dynamo exporter records it in the node's `namespace` metadata). The
verdict comes from the target's own code where it is installed: ONNX Runtime creates a session,
OpenVINO converts the model and its CPU plugin is asked which ops it supports (`query_model`),
TensorRT's ONNX parser parses it. Checks of the ONNX graph itself (opsets, Q/DQ form for INT8, the
ops TensorRT documents as unsupported) run everywhere. `compress` and `build` call `fail_fast`.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError, first_line
from edgekit.model import LoadOptions, check_external_data
from edgekit.runtimes import importable

PRECISIONS = {
    "ort": ("fp32", "int8"),
    "openvino": ("fp32", "fp16", "bf16", "int8"),
    "tensorrt": ("fp32", "fp16", "int8"),
}
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")

# TensorRT's ONNX parser: the opset range and the operators it marks "N" (not supported), from
# https://github.com/onnx/onnx-tensorrt/blob/main/docs/operators.md (TensorRT 10.15). Ops with
# restrictions (supported in some forms) are left to the parser itself.
TENSORRT_OPSETS = (9, 24)
TENSORRT_UNSUPPORTED = frozenset(
    [
        "AffineGrid",
        "Bernoulli",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "CenterCropPad",
        "Col2Im",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "ImageDecoder",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    ]
)
NO_QDQ = "the model has no QuantizeLinear nodes, so it is not an INT8 model: build an INT8 artifact first"
TENSORRT_INT8 = "edgekit compress --int8 --symmetric-activations"  # see int8_findings on int8 vs uint8


@dataclass(frozen=True)
class Finding:
    """One reason the model will not run (or not as asked) on the target; empty op_type and node
    for a finding about the whole model."""

    op_type: str
    node: str
    module: str | None
    reason: str


class ParserUnavailable(EdgekitError):
    """The target's own checker is not installed here: `findings` holds what the ONNX graph alone
    showed, and the message says the check is incomplete (exit 2)."""

    def __init__(self, message: str, findings: list[Finding]):
        super().__init__(message)
        self.findings = findings


def check(model_onnx: Path, target: str, precision: str = "fp32") -> list[Finding]:
    """Everything that stops `model_onnx` running on `target` at `precision`; [] when it is clean.
    Raises ParserUnavailable (with the ONNX-level findings) when TensorRT is not installed."""
    model_onnx = Path(model_onnx)
    if target not in PRECISIONS:
        raise EdgekitError(f"--target {target!r} is not one of {', '.join(PRECISIONS)}.")
    if precision not in PRECISIONS[target]:
        raise EdgekitError(
            f"--precision {precision} does not apply to {target}; use one of {', '.join(PRECISIONS[target])}."
        )
    model = _load(model_onnx)
    findings = _checker(model_onnx) + opset_findings(model)
    if precision == "int8":
        findings += int8_findings(model, target)
    if target == "ort":
        findings += ort_findings(model_onnx, model)
    elif target == "openvino":
        findings += openvino_findings(model_onnx, model, precision)
    else:
        findings += tensorrt_graph_findings(model)
        findings += tensorrt_parser_findings(model_onnx, model, _unique(findings))
    return _unique(findings)


def check_model(
    model: Path,
    target: str,
    precision: str = "fp32",
    load: LoadOptions | None = None,
    opset: int | None = None,
) -> list[Finding]:
    """check() on the model a user has: an ONNX file, an artifact directory, or a torch model
    (exported to ONNX in a temporary directory first, as `edgekit export` would)."""
    from edgekit.artifact import read_manifest
    from edgekit.export import onnx as onnx_export
    from edgekit.model import load_model

    model, load = Path(model), load or LoadOptions()
    cfg = onnx_export.ExportConfig(opset=opset)  # a bad --opset is refused before any loading
    if model.is_dir():
        path = model / read_manifest(model).model_file
        if path.suffix != ".onnx":
            raise EdgekitError(f"{path} is not an ONNX model; check the artifact its plan was built from.")
        return check(path, target, precision)
    loaded = load_model(model, load)
    if loaded.is_onnx and not (load.input_shapes or load.static_batch):
        return check(loaded.onnx_path, target, precision)
    with tempfile.TemporaryDirectory(prefix="edgekit-check-") as tmp:
        if loaded.is_onnx:  # the axes --input-shape / --static-batch fix, fixed in the graph too
            path = onnx_export.copy_onnx(loaded.onnx_path, Path(tmp), loaded.input_spec)
        else:
            path = onnx_export.export(
                loaded.module, loaded.input_spec, Path(tmp), cfg, loaded.n_outputs, loaded.program
            )
        return check(path, target, precision)


def preflight(model: Path, target: str, precision: str, opset: int | None, **load):
    """check_model with the command line's load options (LOAD: arch, trust_pickle, input_shapes as
    typed, input_dtype, static_batch): (findings, None), or, where TensorRT's parser is absent, what
    the ONNX graph showed and the ParserUnavailable saying the check is incomplete."""
    from edgekit.model import parse_shapes

    opts = LoadOptions(**{**load, "input_shapes": parse_shapes(load["input_shapes"])})
    try:
        return check_model(model, target, precision, opts, opset), None
    except ParserUnavailable as e:
        return e.findings, e


def print_findings(findings: list[Finding], title: str) -> None:
    """A table of findings (op, node, module, reason), or one line saying there are none."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not findings:
        console.print(f"{title}: no findings.")
        return
    table = Table(title=f"{title}: {len(findings)} finding(s)", title_justify="left")
    for col in ("op", "node", "module", "reason"):
        table.add_column(col, overflow="fold")
    for f in findings:
        table.add_row(f.op_type or "(model)", f.node or "-", f.module or "-", f.reason)
    console.print(table)


def fail_fast(model_onnx: Path, target: str, precision: str = "fp32") -> None:
    """For `compress` and `build`: one sentence naming the first findings, before any long work.
    Where TensorRT is absent the graph-level findings still count; its parser runs at build time."""
    try:
        findings = check(model_onnx, target, precision)
    except ParserUnavailable as e:
        findings = e.findings
    if findings:  # one sentence: the first finding, how many more, and where to see them all
        findings = sorted(findings, key=lambda f: not f.node)  # a node to fix before the model's verdict
        first = describe(findings[0]).rstrip(".")
        more = f" (and {len(findings) - 1} more finding(s))" if len(findings) > 1 else ""
        raise EdgekitError(
            f"{Path(model_onnx).name} will not run on {target} at {precision}: {first}{more}; "
            f"run `edgekit check MODEL --target {target} --precision {precision}` for the full list."
        )


def describe(f: Finding) -> str:
    where = f"node {f.node} ({f.op_type}" + (f", module {f.module}" if f.module else "") + ")"
    return f"{where}: {f.reason}" if f.node else f.reason


def _load(path: Path):
    import onnx

    if not path.is_file():
        raise EdgekitError(f"{path} does not exist; pass an ONNX file or an edgekit artifact directory.")
    try:
        model = onnx.load(str(path), load_external_data=False)  # the graph is enough; weights stay on disk
    except Exception:
        raise EdgekitError(
            f"{path} is not a valid ONNX model (it could not be parsed as ONNX protobuf)."
        ) from None
    check_external_data(path, model)
    return model


def node_module(node) -> str | None:
    """The torch module a node came from, like "layer1.conv1 (Conv2d)", from the dynamo exporter's
    `namespace` metadata (": models.Net/layer1: pkg.Block/layer1.conv1: torch...Conv2d/conv2d: aten...")."""
    meta = {p.key: p.value for p in node.metadata_props}
    scopes = [s.split(": ", 1) for s in meta.get("namespace", "").split("/") if ": " in s]
    if len(scopes) < 2:  # the last scope is the aten op itself
        return None
    path, cls = scopes[-2]
    cls = cls.rsplit(".", 1)[-1]
    return f"{path} ({cls})" if path else cls


def _finding(node, reason: str) -> Finding:
    op = f"{node.domain}:{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
    return Finding(op, node.name, node_module(node), reason)


def _whole(reason: str) -> Finding:
    return Finding("", "", None, reason)


def _unique(findings: list[Finding]) -> list[Finding]:
    return list(dict.fromkeys(findings))


def _checker(path: Path) -> list[Finding]:
    """The ONNX checker's verdict; on nodes out of order, its verdict once they are sorted, as
    edgekit sorts them when it takes the file in (onnx_export.topologically_sorted)."""
    import onnx

    from edgekit.export import onnx as onnx_export

    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        if "topologically sorted" not in str(e):
            return [_whole(f"the model fails the ONNX checker: {first_line(e)}")]
        model = onnx_export.topologically_sorted(onnx.load(str(path)))
        try:
            onnx.checker.check_model(model)
        except Exception as e:
            return [_whole(f"the model fails the ONNX checker: {first_line(e)}")]
    return []


def _opset(model, domain: str = "") -> int | None:
    aliases = {"", "ai.onnx"} if domain in ("", "ai.onnx") else {domain}
    return next((o.version for o in model.opset_import if o.domain in aliases), None)


def opset_findings(model) -> list[Finding]:
    """Standard-domain nodes whose op does not exist at the opset the model declares."""
    import onnx

    out = []
    for node in model.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            continue
        version = _opset(model, node.domain)
        domain = "" if node.domain == "ai.onnx" else node.domain
        if version is None:
            out.append(_finding(node, f"the model imports no opset for domain {node.domain or 'ai.onnx'!r}"))
        elif not onnx.defs.has(node.op_type, domain):
            out.append(_finding(node, f"{node.op_type} is not an ONNX operator"))
        else:
            try:
                onnx.defs.get_schema(node.op_type, version, domain)
            except onnx.defs.SchemaError:
                since = onnx.defs.get_schema(node.op_type, domain).since_version
                out.append(
                    _finding(
                        node, f"{node.op_type} exists from opset {since}; the model declares opset {version}"
                    )
                )
    return out


def _constants(model) -> dict:
    """Initializers and Constant-node outputs as numpy arrays (for zero points)."""
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                values[node.output[0]] = numpy_helper.to_array(value)
    return values


def int8_findings(model_or_path, target: str) -> list[Finding]:
    """An INT8 model is an explicitly quantized (Q/DQ) one; for TensorRT its Q/DQ nodes must be int8
    with zero point 0 (it supports no other form). Pure ONNX inspection: runs without TensorRT."""
    model = _load(Path(model_or_path)) if isinstance(model_or_path, str | Path) else model_or_path
    nodes = model.graph.node
    if not any(n.op_type == "QuantizeLinear" for n in nodes):
        how = TENSORRT_INT8 if target == "tensorrt" else "edgekit compress --int8"
        return [_whole(f"{NO_QDQ}: {how}.")]
    if target != "tensorrt":
        return []
    values = _constants(model)
    out = []
    for node in nodes:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue  # no zero point input: 0, and int8 unless output_dtype says otherwise
        zp = values.get(node.input[2])
        if zp is None:
            continue
        kind, value = zp.dtype.name, int(zp.ravel()[zp.ravel() != 0][0]) if zp.any() else 0
        if kind == "uint8":
            reason = (
                f"quantizes to uint8 (zero point {value}); TensorRT takes int8 with zero point 0 only: "
                f"re-quantize with {TENSORRT_INT8}."
            )
        elif kind != "int8":
            reason = (
                f"dequantizes {kind} (a quantized bias); TensorRT's DequantizeLinear takes int8 only: "
                f"re-quantize with {TENSORRT_INT8} (which keeps biases in float)."
            )
        elif value:
            reason = (
                f"zero point {value}: TensorRT supports only zero point 0; re-quantize with {TENSORRT_INT8}."
            )
        else:
            continue
        out.append(_finding(node, reason))
    return out


def ort_findings(path: Path, model) -> list[Finding]:
    """Ops ONNX Runtime does not know, then what creating a CPU session (no graph optimization, so
    the nodes are the model's own) reports: it stops at the first node it has no kernel for."""
    import onnxruntime as ort
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    known = {(s.domain, s.name) for s in C.get_all_operator_schema()}
    known |= {(f.domain, f.name) for f in model.functions}  # model-local functions are inlined
    out = [
        _finding(
            n,
            f"ONNX Runtime has no operator {n.op_type} in domain {n.domain!r} (a custom op needs its "
            "library registered in the session options).",
        )
        for n in model.graph.node
        if n.domain not in STANDARD_DOMAINS and (n.domain, n.op_type) not in known
    ]
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        out += _ort_error(model, str(e), out)
    return out


# ORT's load errors put its source file and C++ function before the reason, which a 300-character
# first line would cut off: "... failed:/onnxruntime_src/.../model.cc:256 onnxruntime::Model::Model(
# onnx::ModelProto&&, ...) Unsupported model IR version: 13, max supported IR version: 11"
ORT_WHERE = re.compile(r"\S*onnxruntime_src/\S+:\d+ [\w:~]+\([^)]*\) ")


def _ort_error(model, msg: str, already: list[Finding]) -> list[Finding]:
    """A session error as findings: the node with no kernel, or the unregistered op, or the model."""
    m = re.search(r"Could not find an implementation for (\w+)\(\d+\) node with name '([^']*)'", msg)
    if m:
        nodes = [n for n in model.graph.node if n.name == m.group(2)]
        reason = (
            f"ONNX Runtime's CPU provider has no kernel for {m.group(1)} with these input types or opset."
        )
        return [_finding(n, reason) for n in nodes] or [Finding(m.group(1), m.group(2), None, reason)]
    m = re.search(r"([\w.]*):(\w+)\(-?\d+\) is not a registered function/op", msg)
    if m and any(f.op_type.endswith(f":{m.group(2)}") for f in already):
        return []
    where = ORT_WHERE.search(msg)
    reason = msg[where.end() :] if where else msg
    return [_whole(f"ONNX Runtime cannot load the model: {first_line(Exception(reason))}")]


def openvino_findings(path: Path, model, precision: str) -> list[Finding]:
    """Ops OpenVINO cannot convert, then ops its CPU plugin does not support (query_model), then a
    precision this CPU cannot run."""
    import openvino as ov

    from edgekit.runtimes.ov import readable

    core = ov.Core()
    try:
        with readable(path) as onnx_path:
            ov_model = core.read_model(onnx_path)
    except Exception as e:
        return _conversion_findings(model, str(e))
    supported = core.query_model(ov_model, "CPU")
    by_name = {n.name: n for n in model.graph.node} | {o: n for n in model.graph.node for o in n.output}
    out = []
    for op in ov_model.get_ops():
        name = op.get_friendly_name()
        if name in supported or op.get_type_name() in ("Parameter", "Result", "Constant"):
            continue
        reason = f"OpenVINO's CPU plugin does not support this op (it became {op.get_type_name()})."
        node = by_name.get(name)
        out.append(_finding(node, reason) if node else Finding(op.get_type_name(), name, None, reason))
    return out + _cpu_precision(core, precision)


def _conversion_findings(model, msg: str) -> list[Finding]:
    """read_model's "No conversion rule found for operations: Det-20, ai.onnx.ml.Scaler" (or
    "Conversion is failed for: ...") as one finding per ONNX node of those ops."""
    m = re.search(r"(?:No conversion rule found for operations|Conversion is failed for): (.+)", msg)
    if not m:
        return [_whole(f"OpenVINO cannot read the model: {first_line(msg)}")]
    out = []
    for entry in (e.strip() for e in m.group(1).split(",")):
        op = re.sub(r"-\d+$", "", entry)  # "Det-20": the op at opset 20
        nodes = [n for n in model.graph.node if op in (n.op_type, f"{n.domain}.{n.op_type}")]
        reason = "OpenVINO has no conversion for this op (its ONNX frontend cannot read it)."
        if why := openvino_refusals(msg).get(entry):
            reason = f"OpenVINO's ONNX frontend refuses this node: {why.rstrip('.')}."
        out += [_finding(n, reason) for n in nodes] or [Finding(op, "", None, reason)]
    return out


def openvino_refusals(msg: str) -> dict[str, str]:
    """OpenVINO's reason per op it has but refused on a node, from read_model's message ("-- If-13
    with a message:\n...\nRank of If condition input must be equal to 0 or 1\n"): the last line of
    each entry's message, by the entry ("If-13")."""
    told = re.finditer(r"-- (\S+) with a message:\n(.*?)(?=\n\s*\n|\nSummary|\n-- |$)", msg, re.S)
    return {m.group(1): m.group(2).strip().splitlines()[-1].strip() for m in told if m.group(2).strip()}


def _cpu_precision(core, precision: str) -> list[Finding]:
    """bf16 and f16 run natively only where the CPU has them (AVX512_BF16/AMX; AVX512_FP16/AMX-FP16)."""
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if precision == "bf16" and "BF16" not in caps:
        return [
            _whole("this CPU has no bf16 instructions (AVX512_BF16 or AMX): OpenVINO runs bf16 in f32 here.")
        ]
    if precision == "fp16" and "FP16" not in caps:
        fallback = "bf16" if "BF16" in caps else "f32"
        return [
            _whole(
                f"this CPU has no f16 arithmetic: OpenVINO's CPU plugin runs an f16 request in {fallback}."
            )
        ]
    return []


def tensorrt_graph_findings(model) -> list[Finding]:
    """What the ONNX graph alone shows for TensorRT: the opset range and the documented unsupported
    ops, and non-standard domains (TensorRT needs a plugin of that name for them)."""
    lo, hi = TENSORRT_OPSETS
    out = []
    version = _opset(model)
    if version is not None and not lo <= version <= hi:
        out.append(_whole(f"the model's opset {version} is outside TensorRT's parser range, {lo} to {hi}."))
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            out.append(
                _finding(
                    node,
                    f"TensorRT has no importer for domain {node.domain!r}; it needs a "
                    f"TensorRT plugin named {node.op_type}.",
                )
            )
        elif node.op_type in TENSORRT_UNSUPPORTED:
            out.append(_finding(node, "TensorRT's ONNX parser does not support this op."))
    return out


def tensorrt_parser_findings(path: Path, model, so_far: list[Finding]) -> list[Finding]:
    """TensorRT's ONNX parser errors, node by node; without TensorRT (or a GPU) the check cannot be
    completed, which is an error carrying the findings so far rather than a silent pass."""
    from edgekit.export import trt_parser

    if not importable("tensorrt"):
        raise ParserUnavailable(
            "TensorRT is not installed here, so its parser cannot check the model; the findings above come "
            "from the ONNX graph alone: run this check where pip install 'edgekit[tensorrt]' works, on a "
            "machine with an NVIDIA GPU.",
            so_far,
        )
    try:
        trt = trt_parser.require_tensorrt()
    except EdgekitError as e:
        raise ParserUnavailable(f"{e} The findings above come from the ONNX graph alone.", so_far) from None
    _builder, _network, _parser, errors = trt_parser.parse(trt, path, trt_parser.make_logger(trt, []))
    by_name = {n.name: n for n in model.graph.node}
    out = []
    for node_name, op, desc in errors:
        node = by_name.get(node_name)
        reason = f"TensorRT's parser: {desc}"
        out.append(_finding(node, reason) if node else Finding(op or "", node_name or "", None, reason))
    return out
