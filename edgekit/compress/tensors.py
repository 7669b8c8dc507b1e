"""Intermediate tensors of an ONNX model over data: what smoothing, equalization and bias correction
measure (channel ranges, means) before they rewrite weights."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from edgekit import batching
from edgekit.data import Samples
from edgekit.runtimes.ort import threads

FLOAT = 1  # onnx.TensorProto.FLOAT, without importing onnx here


def values(
    model, names: dict[str, int], samples: Samples, fixed: int | None, batch: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Per batch of SAMPLES, the values of the tensors NAMES (name -> ONNX element type) inside
    MODEL (a ModelProto) and how many of the batch's samples are real (the rest pad a fixed batch).
    A copy of MODEL with them as its outputs runs with graph optimizations off, so every tensor keeps
    its name; it goes through a file, since a model over 2 GB cannot be serialized to memory."""
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
        large = probe.ByteSize() > 2**31 - 2**24
        onnx.save(probe, str(path), save_as_external_data=large, location="probe.data" if large else None)
        del probe
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for feeds, real in batching.batches(samples.inputs, fixed, batch):
        yield dict(zip(names, session.run(list(names), feeds), strict=True)), real
