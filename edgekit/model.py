"""Load the model file a user actually has into an nn.Module or an ONNX path, with its InputSpec.

Formats: TorchScript (`torch.jit.save`), torch.export programs (`.pt2`), a state_dict with
`--arch module:factory`, ONNX, and (only with `--trust-pickle`) a fully pickled nn.Module.
"""

from __future__ import annotations

import inspect
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.artifact import InputSpec, LoadOptions, Source, TensorSpec, sha256_file, shapes_from_text
from edgekit.errors import EdgekitError, first_line
from edgekit.memory import meminfo_available
from edgekit.user_code import load_function

BATCH = "batch"
DTYPES = ("float32", "float16", "int64", "int32", "uint8", "bool")
PICKLE_HEADERS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))  # torch.save's legacy format
ZIP_HEADER = b"PK\x03\x04"  # torch.save's archive (a zip), also when truncated


@dataclass
class LoadedModel:
    """A user's model, ready for torch passes (`module`) or ONNX passes (`onnx_path`)."""

    source: Source
    input_spec: InputSpec
    module: Any = None  # torch.nn.Module for torch formats
    program: Any = None  # the torch.export program of a .pt2 file: exported as is
    n_outputs: int = 0  # output tensors of the torch model (flattened), from its first run
    onnx_path: Path | None = None  # for ONNX files: torch passes are skipped

    @property
    def is_onnx(self) -> bool:
        return self.onnx_path is not None


def parse_shapes(texts: tuple[str, ...]) -> list[list[int]] | dict[str, list[int]]:
    """--input-shape values (`1,3,224,224`, or `input_ids:1,64` as trtexec writes it) as
    LoadOptions.input_shapes takes them; a clear sentence for anything else."""
    try:
        return shapes_from_text(texts)
    except ValueError as e:
        raise EdgekitError(f"--input-shape {e}.") from None


def load_model(path: Path, opts: LoadOptions) -> LoadedModel:
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"{path} does not exist.")
    if not path.is_file():
        raise EdgekitError(
            f"{path} is not a regular file (a directory, pipe or device is never read); pass the "
            "model file itself."
        )
    for dtype in (opts.input_dtype, *opts.input_dtypes.values()):
        if dtype not in DTYPES:
            raise EdgekitError(f"--input-dtype {dtype!r} is not one of {', '.join(DTYPES)}.")
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path, opts)
    kind, module, example, left_out = _load_torch(path, opts)
    program = None
    if kind == "torch.export":
        program, module = module, _to_eval(module.module())
    source = Source(path=str(path.absolute()), sha256=sha256_file(path), kind=kind, left_out=left_out)
    spec = _torch_input_spec(path, module, example, opts)
    _check_fits(spec)
    n_outputs = _check_runs(path, module, spec)
    return LoadedModel(source=source, input_spec=spec, module=module, program=program, n_outputs=n_outputs)


def _load_onnx(path: Path, opts: LoadOptions) -> LoadedModel:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise EdgekitError(
            f"{path} is not a valid ONNX model (it could not be parsed as ONNX protobuf)."
        ) from None
    if not model.graph.node:
        raise EdgekitError(f"{path} is not a valid ONNX model (its graph has no nodes).")
    check_external_data(path, model)
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for vi in (v for v in model.graph.input if v.name not in inits):
        t = vi.type.tensor_type
        dims = [onnx_axis(d, i, vi.name) for i, d in enumerate(t.shape.dim)]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        specs.append(TensorSpec(name=vi.name, shape=dims, dtype=dtype))
    if opts.input_shapes:
        specs = _apply_shapes_to_onnx(path, specs, opts)
    _set_batch_axes(path, specs, opts.batch_axes)
    if opts.static_batch:
        for t in specs:
            t.shape = [1 if i == t.batch_axis and isinstance(d, str) else d for i, d in enumerate(t.shape)]
    spec = InputSpec(inputs=specs)
    _check_fits(spec)
    source = Source(path=str(path.absolute()), sha256=sha256_file(path), kind="onnx")
    return LoadedModel(source=source, input_spec=spec, onnx_path=path)


# Symbols exporters write for "unknown", not for one size shared (PaddlePaddle: [-1, 3, ?, ?]).
UNKNOWN_SYMBOLS = frozenset({"?", "-1", "None"})


def onnx_axis(dim, i: int, name: str) -> int | str:
    """Axis I of input NAME as the spec holds it: its size, the graph's own symbol (shared where the
    graph shares it), or for an unnamed, -1 or `?` axis `batch` when it is the first and a name of
    its own (`x_dim2`) otherwise, so no unknown axis is tied to another."""
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return dim.dim_value
    symbol = dim.dim_param if dim.dim_param not in UNKNOWN_SYMBOLS else ""
    return symbol or (BATCH if i == 0 else f"{name}_dim{i}")


def _set_batch_axes(path: Path, specs: list[TensorSpec], given: dict[str, int]) -> None:
    """Each input's batch axis: GIVEN (--batch-axis), else the first axis, unless that is a number
    where other inputs' first axes are symbolic: then the axis named as theirs ([2, N, 64] beside
    [N, 300]: 1), or its first symbolic axis (Silero VAD's state, [2, ?, 128] beside [?, ?]: a
    fixed 2 cannot be a dynamic batch), and in a static model whose inputs' first axes disagree, one
    of them 1, the first axis of size 1 (Silero VAD's OpenVINO export: [2, 1, 128] beside [1, 576]);
    a scalar input has none (it is fed as it is)."""
    names = [t.name for t in specs]
    batch = {t.shape[0] for t in specs if t.shape and isinstance(t.shape[0], str)}
    firsts = {t.shape[0] for t in specs if t.shape}
    static_one = not batch and len(firsts) > 1 and 1 in firsts
    unknown = next((n for n in given if n not in names), None)
    if unknown is not None:
        raise EdgekitError(
            f"--batch-axis names {unknown!r}, which is not an input of {path}; its inputs are "
            f"{', '.join(names)}."
        )
    for t in specs:
        axis = given.get(t.name)
        if axis is not None and not 0 <= axis < len(t.shape):
            raise EdgekitError(
                f"--batch-axis {t.name}={axis} is out of range: input {t.name!r} of {path} has shape "
                f"{t.shape}, so its batch axis is one of 0 to {len(t.shape) - 1}."
                if t.shape
                else f"--batch-axis {t.name}={axis}: input {t.name!r} of {path} is a scalar, which has no "
                "batch axis (give it with --calib-const)."
            )
        symbolic = [i for i, d in enumerate(t.shape) if isinstance(d, str)]
        first = symbolic[0] if batch and t.shape and isinstance(t.shape[0], int) and symbolic else 0
        named = next((i for i, d in enumerate(t.shape) if d in batch or (static_one and d == 1)), first)
        t.batch_axis = (axis if axis is not None else named) if t.shape else None


def check_external_data(path: Path, model) -> None:
    """Each external data file the ONNX model's weights live in must be next to it: one sentence
    naming a missing one, before any runtime fails on it with a cut-off reason."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            location = ExternalDataInfo(tensor).location
            if not (path.parent / location).is_file():
                raise EdgekitError(
                    f"{path} keeps its weights in the file {location}, which is missing from "
                    f"{path.parent.absolute()}; put it next to the model."
                )


def _check_fits(spec: InputSpec) -> None:
    """Refuse an input of one sample that alone exceeds the memory available, before anything
    allocates it (numpy would fail with a traceback, or the kernel kill the process)."""
    available = meminfo_available()  # None where there is no /proc: nothing to check against
    if available is None:
        return
    for t in spec.inputs:
        shape = t.concrete_shape(1)
        size = math.prod(shape) * np.dtype(t.dtype).itemsize
        if size > available:
            raise EdgekitError(
                f"input {t.name!r} of shape {','.join(map(str, shape))} ({t.dtype}) takes "
                f"{size / 2**30:,.1f} GiB, more than the {available / 2**30:.1f} GiB of memory "
                "available; check --input-shape."
            )


def _ordered_shapes(
    path: Path, names: list[str], opts: LoadOptions, declared: bool = False
) -> list[list[int] | None]:
    """The --input-shape values in input order: positional ones as given, named ones by NAMES; with
    DECLARED (an ONNX file, whose inputs declare their shapes) an input not named is None."""
    shapes = opts.input_shapes
    if not isinstance(shapes, dict):
        return shapes
    unknown = [n for n in shapes if n not in names]
    missing = [] if declared else [n for n in names if n not in shapes]
    if unknown or missing:
        what = (
            f"names {unknown[0]!r}, which is not an input of {path}"
            if unknown
            else f"gives no shape for the input {missing[0]!r} of {path}"
        )
        raise EdgekitError(
            f"--input-shape {what}; give one shape for each of its inputs: {', '.join(names)}."
        )
    return [shapes.get(n) for n in names]


def _apply_shapes_to_onnx(path: Path, specs: list[TensorSpec], opts: LoadOptions):
    """SPECS with the --input-shape sizes on their symbolic axes; an input --input-shape does not
    name keeps its declared shape, with the sizes given for the symbols it shares with those named
    (a fixed state or a scalar beside the one input whose size the user chose)."""
    shapes = _ordered_shapes(path, [t.name for t in specs], opts, declared=True)
    if len(shapes) != len(specs):
        raise EdgekitError(
            f"{path} has {len(specs)} input(s) but {len(shapes)} --input-shape "
            "value(s) were given; give one per input, in order."
        )
    out, sizes = {}, {}  # a symbol the graph shares between inputs takes one size
    for spec, shape in zip(specs, shapes, strict=True):
        if shape is None:
            continue
        given = ",".join(map(str, shape))
        if len(shape) != len(spec.shape):
            raise EdgekitError(
                f"--input-shape {given} does not fit input {spec.name!r} of {path}, which has "
                f"{len(spec.shape)} axes ({_shape_text(spec.shape)})."
            )
        for i, (d, s) in enumerate(zip(spec.shape, shape, strict=True)):
            if isinstance(d, int) and d != s:
                raise EdgekitError(
                    f"--input-shape {given} gives axis {i} of input {spec.name!r} the size {s}, "
                    f"but {path} fixes it at {d} ({_shape_text(spec.shape)})."
                )
            if isinstance(d, str) and (i or opts.static_batch) and sizes.setdefault(d, s) != s:
                raise EdgekitError(
                    f"--input-shape gives the axis {d!r}, which the inputs of {path} share, "
                    f"the sizes {sizes[d]} and {s}; give it one size."
                )
        dims = [
            d if isinstance(d, int) else (s if i or opts.static_batch else d)
            for i, (d, s) in enumerate(zip(spec.shape, shape, strict=True))
        ]
        out[spec.name] = TensorSpec(name=spec.name, shape=dims, dtype=spec.dtype)
    # an input not named: its shared symbols sized as given (a batch only with --static-batch)
    return [
        out.get(t.name)
        or TensorSpec(
            name=t.name,
            shape=[sizes.get(d, d) if i or opts.static_batch else d for i, d in enumerate(t.shape)],
            dtype=t.dtype,
        )
        for t in specs
    ]


def _shape_text(shape: list[int | str]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def _load_torch(path: Path, opts: LoadOptions):
    """Return (kind, nn.Module in eval mode or ExportedProgram, input shapes/dtypes or None, the
    checkpoint entries --arch has no parameter for)."""
    import torch

    names = _zip_names(path)
    corrupt = (
        f"{path} could not be read as a PyTorch model file; it may be truncated or corrupt "
        "(re-save it with torch.jit.save, torch.export.save or torch.save(model.state_dict()))."
    )
    if any("/code/" in n or n.endswith("/constants.pkl") for n in names):
        try:
            return "torchscript", torch.jit.load(str(path), map_location="cpu").eval(), None, []
        except Exception:
            raise EdgekitError(corrupt) from None
    if any(n.endswith("/archive_format") or "/models/" in n for n in names):
        try:
            ep = torch.export.load(str(path))
        except Exception:
            raise EdgekitError(corrupt) from None
        return "torch.export", ep, _program_inputs(ep), []
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        head = _head(path)
        pickled = head.startswith(PICKLE_HEADERS) or any(n.endswith("data.pkl") for n in names)
        if not pickled and not head.startswith(ZIP_HEADER):
            raise EdgekitError(
                f"{path} is not a model file edgekit can read; it reads TorchScript, torch.export "
                "(.pt2), a state_dict (with --arch), a pickled nn.Module (with --trust-pickle) and ONNX."
            ) from None
        if not (pickled and _is_pickle_refusal(e)):
            raise EdgekitError(corrupt) from None
        if not opts.trust_pickle:
            raise EdgekitError(
                f"{path} is a fully pickled Python object, and loading it runs code stored in the "
                "file; pass --trust-pickle if you trust its source, or re-save it with "
                "torch.jit.save / torch.export.save, or as a state_dict used with --arch."
            ) from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as e2:
            raise EdgekitError(f"{path} could not be unpickled: {first_line(e2)}.") from None
        if isinstance(obj, torch.nn.Module):
            return "pickle", obj.eval(), None, []
    state = _as_state_dict(obj)
    several = [k for k, v in obj.items() if _as_state_dict(v) is not None] if isinstance(obj, dict) else []
    if state is None and len(several) > 1:
        raise EdgekitError(
            f"{path} holds several state_dicts ({', '.join(map(str, several))}) and none under a usual "
            f"name; save the one to compress alone: torch.save(checkpoint[{several[0]!r}], 'weights.pt')."
        )
    if state is None:
        raise EdgekitError(
            f"{path} holds a {type(obj).__name__}, not a model or a state_dict; save the model "
            "with torch.jit.save, torch.export.save or torch.save(model.state_dict())."
        )
    if not opts.arch:
        raise EdgekitError(
            f"{path} is a state_dict (weights only); pass --arch package.module:factory, "
            "a function that builds the model, so the weights can be loaded into it."
        )
    module = _build_arch(opts.arch)
    state = _unwrapped(state, module)
    own = module.state_dict().keys()
    extra = sorted(state.keys() - own)
    if extra and own <= state.keys():  # a training checkpoint's extras: a loss's parameters, an EMA's
        state = {k: v for k, v in state.items() if k in own}
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise EdgekitError(f"the weights in {path} do not fit --arch {opts.arch}: {first_line(e)}") from None
    return "state_dict", module.eval(), None, extra


def _program_inputs(ep) -> list[tuple[list[int | str], str]]:
    """Input shapes and dtypes of a torch.export program; a symbolic axis is kept symbolic (a
    program exported with a fixed batch cannot be re-exported with a dynamic one)."""
    nodes = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    out = []
    for name in ep.graph_signature.user_inputs:
        val = nodes[name].meta["val"]
        dims = [d if isinstance(d, int) else BATCH for d in val.shape]
        out.append((dims, str(val.dtype).removeprefix("torch.")))
    return out


def _to_eval(module):
    try:
        return module.eval()
    except NotImplementedError:  # unlifted torch.export modules refuse .eval(); they are traced
        return module


def _head(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def _is_pickle_refusal(e: Exception) -> bool:
    """torch.load(weights_only=True) met a global beyond tensors and containers: a pickled object."""
    return "Unsupported global" in str(e)


# where checkpoints keep the model's weights beside the optimizer's and the step (Resemblyzer's
# `model_state`), in the order one is taken where a checkpoint holds several
STATE_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "weights", "params")


def _as_state_dict(obj) -> dict | None:
    """A plain state_dict, or the one inside a checkpoint dict: under a key of STATE_KEYS, or the only
    entry that is one (beside a step, an optimizer's state, a config)."""
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if not isinstance(obj, dict):
        return None
    found = {k: v for k, v in obj.items() if _as_state_dict(v) is not None}
    known = [k for k in STATE_KEYS if k in found]
    if known or len(found) == 1:
        return _as_state_dict(found[known[0] if known else next(iter(found))])
    return None


def _unwrapped(state: dict, module) -> dict:
    """STATE without the `module.` prefix that nn.DataParallel and DistributedDataParallel add to
    every key (checkpoints saved from a wrapped model), where MODULE's own keys have none."""
    prefix = "module."
    if not all(k.startswith(prefix) for k in state) or any(k.startswith(prefix) for k in module.state_dict()):
        return state
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _build_arch(arch: str):
    import torch

    fn = load_function(arch, "--arch")
    try:
        module = fn()
    except Exception as e:
        raise EdgekitError(
            f"--arch {arch}: the factory raised {type(e).__name__} ({first_line(e)})."
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise EdgekitError(f"--arch {arch} returned a {type(module).__name__}, not an nn.Module.")
    return module


def _forward_names(module) -> list[str]:
    """The names of MODULE's positional forward arguments (TorchScript's schema, or the signature)."""
    try:
        schema = getattr(module.forward, "schema", None)  # TorchScript
        if schema is not None:
            return [a.name for a in schema.arguments[1:]]
        params = inspect.signature(module.forward).parameters.values()
        return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return []


def _input_names(module, count: int) -> list[str]:
    names = _forward_names(module)
    if len(names) < count or len(set(names[:count])) < count:
        return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]
    return names[:count]


def _torch_input_spec(path: Path, module, example, opts: LoadOptions) -> InputSpec:
    if opts.input_shapes:
        count, forward = len(opts.input_shapes), _forward_names(module)
        if isinstance(opts.input_shapes, dict) and set(opts.input_shapes) <= set(forward):
            count = max(forward.index(n) + 1 for n in opts.input_shapes)  # up to the last one named
        elif isinstance(opts.input_shapes, dict) and forward:
            count = max(count, len(forward))  # a name it does not take: all its inputs, to list them
        names = _input_names(module, count)
        shapes = _ordered_shapes(path, names, opts)
        dtypes = [opts.input_dtypes.get(n, opts.input_dtype) for n in names]
        unknown = next((n for n in opts.input_dtypes if n not in names), None)
        if unknown is not None:
            raise EdgekitError(
                f"--input-dtype names {unknown!r}, which is not an input of {path}; its inputs are "
                f"{', '.join(names)}."
            )
    elif example is not None:
        shapes = [dims for dims, _ in example]
        dtypes = [dtype for _, dtype in example]
        names = _input_names(module, len(shapes))
    else:
        raise EdgekitError(
            f"{path} does not record its input shape; pass --input-shape, e.g. 1,3,224,224 "
            "(repeat it for a model with several inputs)."
        )
    specs = []
    # a program exported with a fixed batch takes that batch only, whatever --input-shape says
    program_batch = [d[0] if d and isinstance(d[0], int) else None for d, _ in example or []]
    for i, (name, shape, dtype) in enumerate(zip(names, shapes, dtypes, strict=True)):
        dims: list[int | str] = list(shape)
        if opts.static_batch:
            dims = [1 if isinstance(d, str) else d for d in dims]
        elif dims and i < len(program_batch) and program_batch[i] is not None:
            dims[0] = program_batch[i]
        elif dims and (example is None or opts.input_shapes):
            dims[0] = BATCH
        specs.append(TensorSpec(name=name, shape=dims, dtype=dtype))
    _set_batch_axes(path, specs, opts.batch_axes)
    for t, shape in zip(specs, shapes, strict=True):  # --batch-axis: the dynamic axis moves there
        if t.batch_axis and t.shape[0] == BATCH:
            t.shape[0], t.shape[t.batch_axis] = shape[0], BATCH
    return InputSpec(inputs=specs)


def example_inputs(spec: InputSpec, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs of the spec's shapes; integers stay small so they are valid ids."""
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = t.concrete_shape(batch)
        if np.issubdtype(np.dtype(t.dtype), np.integer):
            out[t.name] = rng.integers(0, 2, size=shape).astype(t.dtype)
        elif t.dtype == "bool":
            out[t.name] = np.ones(shape, dtype=bool)
        else:
            out[t.name] = rng.standard_normal(shape).astype(t.dtype)
    return out


def run_torch(module, feeds: dict[str, np.ndarray], spec: InputSpec) -> list[np.ndarray]:
    """Run the module on numpy feeds (in spec order) and return its outputs as numpy arrays."""
    import torch

    with torch.inference_mode():
        out = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.names])
    return [t.detach().float().numpy() for t in flatten_outputs(out)]


def flatten_outputs(out) -> list:
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in flatten_outputs(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in flatten_outputs(o)]
    return [out]


def _check_runs(path: Path, module, spec: InputSpec) -> int:
    """Run the model once on the declared shape, so a wrong --input-shape fails here, plainly;
    return how many output tensors it gives."""
    feeds = example_inputs(spec, batch=1)
    try:
        return len(run_torch(module, feeds, spec))
    except Exception as e:
        shapes = "; ".join(",".join(map(str, v.shape)) for v in feeds.values())
        raise EdgekitError(
            f"{path} does not accept input of shape {shapes}: {first_line(e)} "
            "(check --input-shape / --input-dtype)."
        ) from None
