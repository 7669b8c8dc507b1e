"""ONNX -> TensorRT plan (TensorRT 10's Python API), on the NVIDIA GPU that will run it.

What edgekit adds to `tensorrt.Builder`: a validated config (precision, workspace, batch profile),
parser errors that name the ONNX node, INT8 only from an explicitly quantized (Q/DQ) model with the
zero points TensorRT accepts (checked in the ONNX before TensorRT is touched), a timing cache kept
between builds, the builder's log in the artifact (`build.log`), and the layers that ran at a higher
precision than asked ("fallback_layers"), read back from the engine inspector.

Files written to the output directory: `model.plan`, its sidecar `model.plan.json`
({"tensorrt": version, "gpu": name}, read by edgekit/runtimes/trt.py), `build.log`, and
`timing.cache` (unless the config names another timing cache file).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.artifact import InputSpec
from edgekit.errors import EdgekitError
from edgekit.export.trt_parser import make_logger, parse, require_tensorrt
from edgekit.memory import parse_size

PLAN_FILE = "model.plan"
LOG_FILE = "build.log"
CACHE_FILE = "timing.cache"
PRECISIONS = ("fp32", "fp16", "int8")
DYNAMIC_BATCH = (1, 1, 32)  # min / opt / max batch for a dynamic batch axis unless given
RANK = {"int8": 0, "fp16": 1, "bf16": 1, "fp32": 2}  # lower: less precise
COMPUTE = re.compile(r"convolution|deconvolution|matrixmultiply|gemm|fullyconnected", re.IGNORECASE)


def parse_bytes(text: str | int) -> int:
    """ "2G", "512M", "64K", "1048576" -> bytes (edgekit.memory.parse_size); one sentence otherwise."""
    try:
        return parse_size(text)
    except ValueError:
        raise EdgekitError(f"{text!r} is not a size in bytes; write it like 2G, 512M or 1048576.") from None


@dataclass
class TensorRTConfig:
    """How to build a plan. Batch bounds left None come from the input spec: a static batch fixes
    all three, a dynamic one gets 1 / 1 / 32. `workspace` None leaves TensorRT's default (the GPU's
    memory); `timing_cache` None uses timing.cache beside the plan."""

    precision: str = "fp16"
    workspace: int | str | None = None
    min_batch: int | None = None
    opt_batch: int | None = None
    max_batch: int | None = None
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise EdgekitError(
                f"TensorRT precision {self.precision!r} is not one of {', '.join(PRECISIONS)}."
            )
        if self.workspace is not None:
            self.workspace = parse_bytes(self.workspace)
        given = [b for b in (self.min_batch, self.opt_batch, self.max_batch) if b is not None]
        if any(b < 1 for b in given):
            raise EdgekitError("--min-batch, --opt-batch and --max-batch must be at least 1.")
        if self.timing_cache is not None:
            self.timing_cache = Path(self.timing_cache)

    def profile(self, spec: InputSpec) -> tuple[int, int, int]:
        """(min, opt, max) batch for the spec: fixed by a static batch, else given or 1 / 1 / 32."""
        fixed = spec.fixed_batch
        given = (self.min_batch, self.opt_batch, self.max_batch)
        if fixed is not None:
            if any(b is not None and b != fixed for b in given):
                raise EdgekitError(
                    f"the model's batch is fixed at {fixed}, so its plan cannot take other batch sizes; "
                    "drop --min/--opt/--max-batch or export the model with a dynamic batch."
                )
            return fixed, fixed, fixed
        lo = self.min_batch or DYNAMIC_BATCH[0]
        hi = self.max_batch or max(DYNAMIC_BATCH[2], lo)
        opt = self.opt_batch or lo
        if not lo <= opt <= hi:
            raise EdgekitError(f"the batch profile must satisfy min <= opt <= max; got {lo} / {opt} / {hi}.")
        return lo, opt, hi


def build_plan(onnx_path: Path, out_dir: Path, spec: InputSpec, cfg: TensorRTConfig) -> dict:
    """Build `out_dir/model.plan` (+ sidecar, build.log, timing cache) from an ONNX model; return
    a summary: precision, profile, workspace, layers by precision, fallback layers, seconds."""
    from edgekit.export import check
    from edgekit.runtimes.trt import _gpu_name

    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    if cfg.precision == "int8":
        problems = check.int8_findings(onnx_path, "tensorrt")
        if problems:
            raise EdgekitError(f"cannot build an INT8 plan from {onnx_path.name}: {problems[0].reason}")
    profile = cfg.profile(spec)
    trt = require_tensorrt()
    t0 = time.perf_counter()
    lines: list[str] = []
    logger = make_logger(trt, lines)
    try:
        builder, network, _parser, errors = parse(trt, onnx_path, logger)  # the network uses its weights
        if errors:
            shown = "; ".join(_describe(e) for e in errors[:3])
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise EdgekitError(
                f"TensorRT's ONNX parser rejected {onnx_path.name}: {shown}{more}; "
                "run `edgekit check MODEL --target tensorrt` for the full list."
            )
        config = _builder_config(trt, builder, network, cfg, profile)
        cache_path = cfg.timing_cache or out_dir / CACHE_FILE
        _load_timing_cache(config, cache_path)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise EdgekitError(
                f"TensorRT could not build a plan from {onnx_path.name}: "
                f"{_last_error(lines) or 'no reason logged'}; see {out_dir / LOG_FILE}."
            )
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    finally:
        (out_dir / LOG_FILE).write_text("\n".join(lines) + "\n")
    seconds = time.perf_counter() - t0
    plan = bytes(plan)
    (out_dir / PLAN_FILE).write_bytes(plan)
    gpu = _gpu_name()
    sidecar = {"tensorrt": trt.__version__, "gpu": gpu}
    (out_dir / f"{PLAN_FILE}.json").write_text(json.dumps(sidecar, indent=2) + "\n")
    layers = layer_precisions(inspect_plan(trt, plan, logger, network_inputs(network), profile[1]))
    counts: dict[str, int] = {}
    for layer in layers:
        counts[layer["precision"]] = counts.get(layer["precision"], 0) + 1
    return {
        "precision": cfg.precision,
        "profile": {"min_batch": profile[0], "opt_batch": profile[1], "max_batch": profile[2]},
        "workspace": cfg.workspace or "TensorRT default (the GPU's memory)",
        "layers_by_precision": counts,
        "fallback_layers": fallback_layers(layers, cfg.precision),
        "build_seconds": round(seconds, 2),
        "timing_cache": str(cache_path),
        **sidecar,
    }


def _describe(error: tuple[str, str, str]) -> str:
    node, op, desc = error
    return f"node {node or '?'} ({op or '?'}): {desc}"


def network_inputs(network) -> list[tuple[str, tuple[int, ...]]]:
    return [(network.get_input(i).name, tuple(network.get_input(i).shape)) for i in range(network.num_inputs)]


def _builder_config(trt, builder, network, cfg: TensorRTConfig, profile: tuple[int, int, int]):
    config = builder.create_builder_config()
    if cfg.workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace)
    if cfg.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if cfg.precision == "int8":
        # explicit quantization: the scales are the model's Q/DQ nodes, so no calibrator; FP16 too,
        # so the layers left unquantized may run in fp16 rather than fp32
        config.set_flag(trt.BuilderFlag.INT8)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer precisions in the inspector
    inputs = network_inputs(network)
    if any(-1 in shape for _, shape in inputs):
        opt = builder.create_optimization_profile()
        for name, shape in inputs:
            opt.set_shape(name, *(_with_batch(name, shape, b) for b in profile))
        config.add_optimization_profile(opt)
    return config


def _with_batch(name: str, shape: tuple[int, ...], batch: int) -> tuple[int, ...]:
    """The input's shape at this batch; a dynamic axis other than the first cannot be guessed."""
    if -1 in shape[1:]:
        raise EdgekitError(
            f"input {name} has a dynamic axis other than the batch ({list(shape)}); fix it with "
            "--input-shape when exporting."
        )
    return (batch, *shape[1:]) if shape and shape[0] == -1 else shape


def _load_timing_cache(config, path: Path) -> None:
    """Reuse kernel timings from an earlier build (same GPU and TensorRT) when the file exists."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)


def _last_error(lines: list[str]) -> str:
    errors = [ln.split("] ", 1)[1] for ln in lines if ln.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
    return errors[-1][:300] if errors else ""


def inspect_plan(trt, plan: bytes, logger, inputs, opt_batch: int) -> list[dict]:
    """The engine inspector's layers (JSON), with the inputs set to the opt batch: without an
    execution context, a dynamic-shape engine reports "N/A due to dynamic shapes" as formats."""
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(plan)
    context = engine.create_execution_context()
    for name, shape in inputs:
        context.set_input_shape(name, _with_batch(name, shape, opt_batch))
    inspector = engine.create_engine_inspector()
    inspector.execution_context = context
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]


def tensor_precision(fmt: str) -> str | None:
    """ "Row major linear FP16 format", "Half", "Thirty-two wide ... Int8 format." -> fp16 / int8."""
    text = fmt.lower()
    for key, words in (
        ("int8", ("int8",)),
        ("bf16", ("bf16", "bfloat16")),
        ("fp16", ("fp16", "half")),
        ("fp32", ("fp32", "float")),
    ):
        if any(w in text for w in words):
            return key
    return None


def layer_precisions(layers: list[dict]) -> list[dict]:
    """Each layer's name, type and precision: the least precise of its tensors' formats (an INT8
    convolution reads int8 and may write fp16), "other" for integer/shape-only layers."""
    out = []
    for layer in layers:
        tensors = [*layer.get("Inputs", []), *layer.get("Outputs", [])]
        found = [p for t in tensors if (p := tensor_precision(str(t.get("Format/Datatype", ""))))]
        kind = f"{layer.get('LayerType', '')} {layer.get('ParameterType', '')}".strip()
        precision = min(found, key=RANK.__getitem__) if found else "other"
        out.append({"name": str(layer.get("Name", "?")), "type": kind, "precision": precision})
    return out


def fallback_layers(layers: list[dict], requested: str) -> list[dict]:
    """Compute layers (convolution, matrix multiply) that ran at a higher precision than requested:
    copies, reshapes and shape arithmetic legitimately stay in fp32 or integers."""
    return [
        layer
        for layer in layers
        if COMPUTE.search(layer["type"])
        and layer["precision"] in RANK
        and RANK[layer["precision"]] > RANK[requested]
    ]
