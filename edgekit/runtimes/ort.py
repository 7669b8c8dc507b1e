"""ONNX Runtime (CPU execution provider), with explicit thread counts recorded in info()."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.runtimes import importable

NAME = "ort"
INSTALL = "pip install onnxruntime"
SOURCE = False  # runs the artifact's ONNX file


def available() -> bool:
    return importable("onnxruntime")


def describe() -> dict:
    """For `edgekit runtimes`: version and the execution providers this build has."""
    import onnxruntime as ort

    return {"version": ort.__version__, "devices": ort.get_available_providers()}


@dataclass
class Options:
    threads: int = 0  # 0: ONNX Runtime's default (all physical cores)
    graph_optimization: str = "all"  # "basic", "extended", "all"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])


class Session:
    def __init__(self, path: str, device: str = "cpu", options: Options | None = None):
        import onnxruntime as ort

        self.options = options or Options()
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.options.graph_optimization]
        self.device = device
        self._sess = ort.InferenceSession(path, so, providers=self.options.providers)
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._sess.run(None, feeds)

    def info(self) -> dict:
        import onnxruntime as ort

        return {
            "runtime": NAME,
            "version": ort.__version__,
            "device": self.device,
            "providers": self._sess.get_providers(),
            "threads": self.options.threads,
            "graph_optimization": self.options.graph_optimization,
        }


def load(path: str, device: str = "cpu", options: Options | None = None) -> Session:
    if device != "cpu":
        raise ValueError(f"the ort runtime here runs on cpu, not {device}")
    return Session(path, device, options)
