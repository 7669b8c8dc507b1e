"""torch -> ONNX with the dynamo exporter, then checked and verified in ONNX Runtime.

What edgekit adds to `torch.onnx.export`: TorchScript input (converted to torch.export first),
a dynamic batch axis by default, a failure that names the unsupported operator and the module it
came from, onnx.checker + shape inference, and a numeric check against torch on real samples.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit import batching
from edgekit.artifact import InputSpec
from edgekit.benchmarks.metrics import compare_outputs
from edgekit.compress.model_file import default_opset
from edgekit.errors import EdgekitError, VerificationError, first_line
from edgekit.memory import run_batch
from edgekit.model import UNKNOWN_SYMBOLS, run_torch

MODEL_FILE = "model.onnx"
INLINE_LIMIT = 1_800_000_000  # bytes of weights above which ONNX needs an external data file


class ExportConfig(BaseModel):
    """The export pass's config. `opset=None` is the exporter's default (20 with torch 2.13): asking
    the dynamo exporter for an older opset runs a version converter that fails on common models."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    opset: int | None = None
    tolerance: float = Field(1e-3, gt=0, allow_inf_nan=False)  # max |torch - onnx| / max |torch|
    verify_samples: int = Field(32, ge=1)

    def model_post_init(self, context) -> None:
        if self.opset is not None:
            lo, hi = opsets()
            if not lo <= self.opset <= hi:
                raise EdgekitError(
                    f"--opset {self.opset} is outside the opsets the exporter writes, {lo} to {hi}; "
                    "leave --opset out for its default."
                )


def opsets() -> tuple[int, int]:
    """The opsets the dynamo exporter writes as asked: from torchlib's own up to the highest that
    onnxscript's version converter reaches (18 to 25 with torch 2.13 and onnxscript 0.7); asked
    for any other, it writes torchlib's without a word."""
    try:  # private constants: no public API says this
        from onnxscript.version_converter._version_converter import SUPPORTED_MAX_ONNX_OPSET
        from torch.onnx._internal.exporter._constants import TORCHLIB_OPSET
    except ImportError:  # moved in another release: the range of torch 2.13 / onnxscript 0.7
        return 18, 25
    return TORCHLIB_OPSET, SUPPORTED_MAX_ONNX_OPSET


def output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def export(module, spec: InputSpec, out_dir: Path, cfg: ExportConfig, n_outputs: int, program=None) -> Path:
    """Export `module` (or its torch.export `program`, as is unless a static batch is asked of a
    program with a dynamic one) to `out_dir/model.onnx`
    (+ model.onnx.data for more than 1.8 GB of weights)."""
    import torch

    axes = {t.name: t.batch_axis for t in spec.inputs if t.batch_axis is not None}
    dynamic = any(isinstance(t.shape[axes[t.name]], str) for t in spec.inputs if t.name in axes)
    args = tuple(torch.from_numpy(np.zeros(t.concrete_shape(2), dtype=t.dtype)) for t in spec.inputs)
    if program is not None and (dynamic or not _has_symbolic_inputs(program)):
        ep = program
    else:  # a program with a dynamic batch asked for a static one is re-exported from its module
        if isinstance(module, torch.jit.ScriptModule):
            module = _from_torchscript(module, args)
        dims = None
        if dynamic:
            batch = torch.export.Dim("batch")
            dims = tuple(
                {axes[t.name]: batch} if t.name in axes and isinstance(t.shape[axes[t.name]], str) else {}
                for t in spec.inputs
            )
        ep = _torch_export(module, args, dims)
    weights = sum(p.numel() * p.element_size() for p in ep.state_dict.values())
    path = Path(out_dir) / MODEL_FILE
    try:
        with _quiet():
            torch.onnx.export(
                ep,
                args,
                str(path),
                dynamo=True,
                input_names=spec.names,
                output_names=output_names(n_outputs),
                opset_version=cfg.opset,
                external_data=weights > INLINE_LIMIT,
            )
    except Exception as e:
        raise EdgekitError(_conversion_message(e, ep)) from None
    if dynamic:
        _name_batch_axis(path, axes)
    check(path)
    return path


def _name_batch_axis(path: Path, axes: dict[str, int]) -> None:
    """The exporter names the dynamic batch after an internal symbol (`s31`); call it `batch`. AXES:
    each input's batch axis."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    symbols = {
        dims[axes[vi.name]].dim_param
        for vi in model.graph.input
        if vi.name in axes and len(dims := vi.type.tensor_type.shape.dim) > axes[vi.name]
    } - {""}
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in symbols:
                dim.dim_param = "batch"
    onnx.save(model, str(path))


def _has_symbolic_inputs(ep) -> bool:
    user = set(ep.graph_signature.user_inputs)
    return any(
        not isinstance(d, int)
        for n in ep.graph.nodes
        if n.op == "placeholder" and n.name in user
        for d in n.meta["val"].shape
    )


def _from_torchscript(module, args):
    from torch._export.converter import TS2EPConverter

    try:
        with _quiet():
            return TS2EPConverter(module, args).convert().module()
    except Exception as e:
        raise EdgekitError(
            f"the TorchScript model could not be converted for export ({first_line(e)}); "
            "save it with torch.export.save (.pt2) or as a state_dict with --arch instead."
        ) from None


def _torch_export(module, args, dims):
    import torch

    try:
        with _quiet():
            return torch.export.export(module, args, dynamic_shapes=dims, strict=False)
    except Exception as e:
        msg = str(e)
        if dims is not None and re.search(r"specializ|Constraints violated|Guard failed|batch", msg):
            raise EdgekitError(
                "the model fixes its batch size in its code, so it cannot be exported with a "
                f"dynamic batch axis ({first_line(e, 160)}); pass --static-batch."
            ) from None
        raise EdgekitError(
            f"torch.export could not trace the model: {first_line(e)}; see "
            "https://pytorch.org/docs/stable/export.html for supported Python constructs."
        ) from None


def _conversion_message(e: Exception, ep) -> str:
    """Name the operator the exporter could not translate and the module it came from."""
    msg = str(e)
    m = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)'", msg) or re.search(
        r"target=torch\.ops\.([\w.]+?)(?:\.default)?\]", msg
    )
    if not m:
        return f"ONNX export failed: {first_line(e)}"
    op = m.group(1)
    base = op.split(".")[-1]
    where = "an unknown module"
    for node in ep.graph.nodes:
        if node.op == "call_function" and base in str(node.target):
            stack = list((node.meta.get("nn_module_stack") or {}).values())
            if stack:
                path, cls = stack[-1]
                where = f"module {path!r} ({cls.rsplit('.', 1)[-1]})" if path else cls
            break
    return (
        f"ONNX export failed: operator {op} (from {where}) has no ONNX translation; replace it "
        "in that module with supported ops, or register a custom translation."
    )


def check(path: Path) -> None:
    """onnx.checker and strict shape inference, on the file (so external data is handled)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise EdgekitError(f"{path.name} fails the ONNX checker: {first_line(e)}") from None


def copy_onnx(src: Path, out_dir: Path, spec: InputSpec, opset: int = 0, needed_by: str = "") -> Path:
    """Bring a user's ONNX file (and any external data) into the artifact as model.onnx, with the
    axes that the spec fixes (--static-batch, --input-shape) fixed in the graph too, the ones it
    names named, and an opset below OPSET (what the pass NEEDED_BY writes) upgraded to it."""
    import onnx

    dst = Path(out_dir) / MODEL_FILE
    try:
        model = onnx.load(str(src))
    except Exception as e:
        raise EdgekitError(f"{src} could not be loaded with its external data: {first_line(e)}") from None
    model = topologically_sorted(model)
    _weights_not_inputs(model)
    _fix_symbolic_dims(model.graph, spec)
    if 0 < default_opset(model) < opset:
        model = _upgrade(model, src, opset, needed_by)
    if model.ByteSize() < INLINE_LIMIT:
        onnx.save(model, str(dst))
    else:
        onnx.save(model, str(dst), save_as_external_data=True, location=MODEL_FILE + ".data")
    check(dst)
    return dst


def _weights_not_inputs(model) -> None:
    """Leave out of the graph's inputs each one an initializer of the same name gives (IR 3, as the
    ONNX Model Zoo's Caffe2 exports are, had to list every weight as an input too), and raise the IR
    version to 4, where that is no longer required. ONNX Runtime's optimizer, before calibration,
    shared equal weights and dropped their initializers but not their inputs: "Required inputs
    ... are missing". A weight fed at run time is not a deployment edgekit builds for."""
    weights = {t.name for t in model.graph.initializer}
    kept = [v for v in model.graph.input if v.name not in weights]
    if len(kept) < len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.ir_version = max(model.ir_version, 4)


def clear_wrong_output_shapes(path: Path, computed: list[tuple[int, ...]]) -> dict[str, str]:
    """Leave out, in the ONNX file at PATH, each output's declared shape that the shape it COMPUTED
    (one run's) contradicts, a rank or a fixed axis; what each declared and computed. ddddocr's
    recognizer declares [1, seqlen] and computes [T, 1, 8210]: ONNX Runtime logged a warning on
    every run, and a reader of the file would take the wrong layout."""
    import onnx

    from edgekit.compress import model_file

    model = onnx.load(str(path), load_external_data=False)
    wrong = {}
    for out, shape in zip(model.graph.output, computed, strict=False):
        t = out.type.tensor_type
        if not t.HasField("shape"):
            continue
        declared = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        fixed = zip(declared, shape, strict=False)
        if len(declared) != len(shape) or any(d is not None and d != c for d, c in fixed):
            named = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in t.shape.dim]
            wrong[out.name] = f"declared {named}, computes {list(shape)}"
    if wrong:
        model = onnx.load(str(path))
        for out in model.graph.output:
            if out.name in wrong:
                out.type.tensor_type.ClearField("shape")
        model_file.save(model, path)
    return wrong


def topologically_sorted(model):
    """MODEL with its nodes (and its subgraphs') in an order that runs: ONNX requires it and ONNX
    Runtime does not, so files it runs can break the rule (ORT's own float16 converter, keeping
    fp32 inputs, puts their Casts last). onnx_ir's stable sort (onnxscript's IR); MODEL itself where
    it is in order already, or holds a cycle (for the checker to name)."""
    import onnx_ir as ir

    if _in_order(model.graph):
        return model
    graph = ir.serde.deserialize_model(model)
    try:
        graph.graph.sort()
    except ValueError:
        return model
    return ir.serde.serialize_model(graph)


def _in_order(graph, known: frozenset = frozenset()) -> bool:
    """Whether every node of GRAPH and of its subgraphs reads only names made before it (KNOWN:
    the enclosing graphs' names, which a subgraph may read)."""
    from edgekit.compress.outer_reads import subgraphs

    seen = set(known) | {""} | {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        if any(name not in seen for name in node.input):
            return False
        if not all(_in_order(g, frozenset(seen)) for g in subgraphs(node)):
            return False
        seen.update(node.output)
    return True


def _upgrade(model, src: Path, opset: int, needed_by: str):
    """MODEL converted to OPSET by onnx's version converter; one sentence when it cannot be."""
    from onnx import version_converter

    have = default_opset(model)
    try:
        return version_converter.convert_version(model, opset)
    except Exception as e:
        raise EdgekitError(
            f"{src} has opset {have}, below the {opset} that {needed_by} needs, and onnx's version "
            f"converter could not upgrade it: {first_line(e).rstrip('.')}."
        ) from None


def _fix_symbolic_dims(graph, spec: InputSpec) -> None:
    """Give each input axis the spec fixes its value, and the same symbol elsewhere too; an unnamed,
    -1 or `?` axis the spec leaves symbolic gets the spec's name for it."""
    fixed: dict[str, int] = {}
    wanted = {t.name: t.shape for t in spec.inputs}
    for vi in graph.input:
        for dim, value in zip(vi.type.tensor_type.shape.dim, wanted.get(vi.name, []), strict=False):
            unknown = not dim.dim_param or dim.dim_param in UNKNOWN_SYMBOLS
            if isinstance(value, int):
                if not unknown:
                    fixed[dim.dim_param] = value
                dim.dim_value = value
            elif unknown:
                dim.dim_param = value  # clears a -1 dim_value (a oneof)
    for vi in [*graph.input, *graph.output, *graph.value_info]:
        for dim in vi.type.tensor_type.shape.dim:
            if dim.dim_param in fixed:
                dim.dim_value = fixed[dim.dim_param]  # clears dim_param (a oneof)


def verify(module, onnx_path: Path, spec: InputSpec, feeds: dict[str, np.ndarray], cfg: ExportConfig):
    """Run torch and ONNX Runtime on the same samples; fail naming the first diverging outputs."""
    from edgekit.runtimes import ort

    sess = ort.load(str(onnx_path))
    n, fixed = len(next(iter(feeds.values()))), spec.fixed_batch
    size = run_batch(onnx_path, n)  # a 640x640 detector: a few samples a run
    ref = batching.outputs(lambda f: run_torch(module, f, spec), feeds, fixed, size)
    got = batching.outputs(sess.run, feeds, fixed, size)
    per_output = {}
    diverging = []
    for name, r, g in zip(sess.output_names, ref, got, strict=True):
        if r.shape != g.shape:
            raise VerificationError(
                f"exported output {name!r} has shape {list(g.shape)}, torch gives {list(r.shape)}."
            )
        stats = compare_outputs(r, g)
        stats["relative_max_abs_diff"] = stats["max_abs_diff"] / max(float(np.abs(r).max()), 1e-12)
        per_output[name] = stats
        if not stats["relative_max_abs_diff"] <= cfg.tolerance:
            diverging.append(name)
    result = {
        "reference": "torch",
        "runtime": "onnxruntime",
        "samples": n,
        "tolerance": cfg.tolerance,
        "outputs": per_output,
        "max_abs_diff": max(s["max_abs_diff"] for s in per_output.values()),
        "sqnr_db": min(s["sqnr_db"] for s in per_output.values()),
    }
    if diverging:
        worst = per_output[diverging[0]]
        raise VerificationError(
            f"the ONNX model diverges from torch on output(s) {', '.join(diverging[:3])} "
            f"(max abs diff {worst['max_abs_diff']:.3g}, SQNR {worst['sqnr_db']:.1f} dB, "
            f"tolerance {cfg.tolerance:g} relative): an op was mistranslated, or the model amplifies "
            "float rounding there."
        )
    return result


@contextlib.contextmanager
def _quiet():
    """The exporter prints progress and warnings meant for its own developers; keep them out."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        level = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(level)
