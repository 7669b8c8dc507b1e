"""ONNX Runtime: CPU execution provider, and CUDA or TensorRT EPs where this build has them.

The device picks the execution providers. ONNX Runtime falls back to CPU without a word when an
EP fails to initialise; edgekit refuses that instead (a "cuda" row that ran on CPU would be a lie)
and info() records the providers the session actually got, with the thread counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from edgekit.errors import RuntimeFailure, first_line
from edgekit.runtimes import importable

NAME = "ort"
INSTALL = "pip install onnxruntime"
SOURCE = False  # runs the artifact's ONNX file
FORMATS = (".onnx",)
PRECISIONS = ("f32",)  # ORT runs the model's own precision; a lower one is a different artifact
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
GPU_BUILD = {
    "cuda": "pip install onnxruntime-gpu",
    "tensorrt": "pip install onnxruntime-gpu, with TensorRT's libraries",
}


def available() -> bool:
    return importable("onnxruntime")


def unsupported(device: str) -> str | None:
    """Why this onnxruntime build cannot run on DEVICE, or None. A GPU build lists its GPU EPs even
    without a GPU; load() then finds out and fails with the reason."""
    if device not in PROVIDERS:
        return f"the ort runtime runs on {', '.join(PROVIDERS)}, not {device}"
    if not available():
        return f"onnxruntime is not installed ({INSTALL})"
    import onnxruntime as ort

    wanted = PROVIDERS[device][0]
    if wanted not in ort.get_available_providers():
        return f"this onnxruntime build has no {wanted} ({GPU_BUILD[device]})"
    return None


def describe() -> dict:
    """For `edgekit runtimes`: version, the devices this build can use, and its execution providers."""
    import onnxruntime as ort

    have = ort.get_available_providers()
    return {
        "version": ort.__version__,
        "devices": [d for d, providers in PROVIDERS.items() if providers[0] in have],
        "providers": have,
    }


THREADS = "EDGEKIT_THREADS"  # the CPUs a Ray task was given (edgekit.cluster sets it); 0: all cores


def threads(requested: int) -> int:
    """Intra-op threads of a session: REQUESTED, or where that is 0 the CPUs a Ray task was given
    (EDGEKIT_THREADS, edgekit.cluster), else 0: ONNX Runtime's default, all physical cores."""
    return requested or int(os.environ.get(THREADS, "0") or 0)


def cpus() -> int:
    """CPUs edgekit's own thread pools may use: a Ray task's (EDGEKIT_THREADS), else this process's."""
    return threads(0) or len(os.sched_getaffinity(0))


@dataclass
class Options:
    threads: int = 0  # 0: ONNX Runtime's default (all physical cores)
    # "basic", "extended", "all"; "none": the graph as written (an INT8 model's Q/DQ computed literally)
    graph_optimization: str = "all"


class Session:
    def __init__(self, path: str, device: str = "cpu", options: Options | None = None):
        import onnxruntime as ort

        if reason := unsupported(device):
            raise RuntimeFailure(f"{reason}.")
        self.options = options or Options()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads(self.options.threads)
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.options.graph_optimization]
        self.device = device
        wanted = PROVIDERS[device]
        try:
            self._sess = ort.InferenceSession(path, so, providers=wanted)
        except Exception as e:  # onnxruntime's own exception classes, none of them ours
            raise RuntimeFailure(f"onnxruntime could not load {path}: {first_line(e).rstrip('.')}.") from None
        if wanted[0] not in self._sess.get_providers():
            raise RuntimeFailure(
                f"onnxruntime could not use {wanted[0]} for device {device} (the session got only "
                f"{', '.join(self._sess.get_providers())}); check the GPU, driver and onnxruntime-gpu "
                "install."
            )
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs as numpy. On the CUDA and TensorRT EPs run() copies the outputs back to host
        memory before it returns, so the device work is finished and a timed run is complete."""
        return [as_array(o) for o in self._sess.run(None, feeds)]

    def info(self) -> dict:
        import onnxruntime as ort

        return {
            "runtime": NAME,
            "version": ort.__version__,
            "device": self.device,
            "providers": self._sess.get_providers(),  # what the session got, in priority order
            "threads": self.options.threads,
            "graph_optimization": self.options.graph_optimization,
            "precision": "f32",  # no lowering: the model's own precision (the TensorRT EP's fp16 is off)
        }


def load(path: str, device: str = "cpu", options: Options | None = None) -> Session:
    return Session(path, device, options)


def as_array(value) -> np.ndarray:
    """An output as an array: a sequence of maps (skl2onnx's ZipMap, one {class: probability} a
    sample) as [samples, classes] of its values in the maps' order; a sequence of equal tensors
    stacked. Every comparison and batch join reads arrays; ONNX Runtime gives these as lists."""
    if not isinstance(value, list):
        return value
    if value and all(isinstance(v, dict) for v in value):
        return np.array([list(v.values()) for v in value])
    try:
        return np.stack(value) if value else np.zeros((0,), np.float32)
    except ValueError:
        raise RuntimeFailure(
            f"an output is a sequence of {len(value)} tensors of different shapes, which edgekit cannot "
            "compare value by value; export the model with tensor outputs."
        ) from None
