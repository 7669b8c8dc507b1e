"""TensorRT's ONNX parser, on the GPU it needs: shared by the operator check (its parser errors,
node by node) and the plan builder (edgekit/export/tensorrt.py)."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.runtimes import importable

NOT_INSTALLED = (
    "TensorRT is not installed here; pip install 'edgekit[tensorrt]' on a machine with an NVIDIA GPU"
)


def require_tensorrt():
    """The tensorrt module, on a machine whose GPU CUDA can reach; else one sentence."""
    from edgekit.runtimes import trt as runtime

    if not importable("tensorrt"):
        raise EdgekitError(NOT_INSTALLED + ".")
    if reason := runtime.unsupported("cuda"):
        raise EdgekitError(f"cannot build a TensorRT plan here: {reason}.")
    import tensorrt as trt

    return trt


def make_logger(trt, lines: list[str]):
    """A trt.ILogger that keeps INFO and worse in `lines` (for build.log), instead of stderr."""

    class BuildLog(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)

        def log(self, severity, msg):
            if severity != trt.ILogger.Severity.VERBOSE:  # per-tactic lines: megabytes per build
                lines.append(f"[{severity.name}] {msg}")

    return BuildLog()


def parse(trt, onnx_path: Path, logger):
    """Builder, network, parser (keep it alive while the network is used: the network refers to its
    weights) and its errors as (node name, op type, description). TensorRT 10 networks are always
    explicit-batch (flags 0); parse_from_file reads external data."""
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    errors = []
    if not parser.parse_from_file(str(onnx_path)):
        for i in range(parser.num_errors):
            e = parser.get_error(i)
            errors.append((e.node_name(), e.node_operator(), e.desc()))
    return builder, network, parser, errors
