"""Intermediate tensors of an ONNX model over data: what smoothing, equalization and bias correction
measure (channel ranges, means) before they rewrite weights."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.compress import model_file
from edgekit.compress.calib_memory import chunk_samples
from edgekit.data import Samples
from edgekit.runtimes.ort import threads

FLOAT = 1  # onnx.TensorProto.FLOAT, without importing onnx here


def values(
    model, names: dict[str, int], samples: Samples, fixed: int | None, batch: int, limit: int | None = None
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Per batch of SAMPLES, the values of the tensors NAMES (name -> ONNX element type) inside
    MODEL (a ModelProto) and how many of the batch's samples are real (the rest pad a fixed batch).
    A copy of MODEL with them as its outputs runs with graph optimizations off, so every tensor keeps
    its name; it goes through a file, since a model over 2 GB cannot be serialized to memory. With
    LIMIT (bytes), the first sample (batch) runs alone and the others in batches whose tensors fit
    LIMIT, at most BATCH samples."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(n, t, None) for n, t in names.items())
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads(0)
    with tempfile.TemporaryDirectory(prefix="edgekit-tensors-") as tmp:
        path = Path(tmp) / "probe.onnx"
        model_file.save(probe, path)
        del probe
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    inputs = samples.inputs
    if limit is not None:
        first = fixed or 1
        for feeds, real in batching.batches(_part(inputs, 0, first), fixed, first):
            out = session.run(list(names), feeds)
            yield dict(zip(names, out, strict=True)), real
        batch = min(batch, chunk_samples(sum(o.nbytes for o in out) // first, limit, fixed))
        inputs = _part(inputs, first, None)
    if len(next(iter(inputs.values()))):
        for feeds, real in batching.batches(inputs, fixed, batch):
            yield dict(zip(names, session.run(list(names), feeds), strict=True)), real


def _part(inputs: dict, start: int, stop: int | None) -> dict:
    """INPUTS' samples START:STOP, Stacked as INPUTS is."""
    part = {k: v[start:stop] for k, v in inputs.items()}
    return batching.Stacked(part, inputs.axes) if isinstance(inputs, batching.Stacked) else part
