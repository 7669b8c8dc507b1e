"""OpenVINO, reading the artifact's ONNX file directly (an .xml IR works the same way).

The precision is pinned, never left to the plugin: OpenVINO's CPU plugin runs an fp32 model in
bf16 by default on CPUs with AVX-512 BF16, so an fp32 row would silently be a bf16 row. info()
reports the precision read back from the compiled model, which is what actually ran.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import RuntimeFailure
from edgekit.runtimes import importable

NAME = "openvino"
INSTALL = "pip install 'edgekit[openvino]'"
SOURCE = False  # runs the artifact's ONNX file
FORMATS = (".onnx", ".xml")
PRECISIONS = ("f32", "bf16", "f16")
HINTS = ("latency", "throughput")


def available() -> bool:
    return importable("openvino")


def _devices(core) -> list[str]:
    """The device kinds OpenVINO sees ("GPU.0" and "GPU.1" are both "GPU"), in its order."""
    return list(dict.fromkeys(d.split(".")[0] for d in core.available_devices))


def unsupported(device: str) -> str | None:
    """Why OpenVINO cannot run on DEVICE here (cpu, gpu, npu), or None."""
    if not available():
        return f"openvino is not installed ({INSTALL})"
    import openvino as ov

    try:
        have = _devices(ov.Core())
    except RuntimeError as e:
        return f"OpenVINO could not list its devices ({_cause(e)})"
    if device.upper() not in have:
        return f"OpenVINO has no {device.upper()} device here (it has {', '.join(have)})"
    return None


def _cause(e: Exception) -> str:
    """OpenVINO's message without its stack of "Exception from src/..." lines: the cause, which
    comes last."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    causes = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (causes or lines or [type(e).__name__])[-1].lstrip("- ")[:300].rstrip(".")


def describe() -> dict:
    """For `edgekit runtimes`: version and the devices OpenVINO sees here."""
    import openvino as ov

    try:
        devices = _devices(ov.Core())
    except RuntimeError as e:
        raise RuntimeFailure(f"OpenVINO could not list its devices: {_cause(e)}.") from None
    return {"version": ov.get_version(), "devices": [d.lower() for d in devices]}


@dataclass
class Options:
    threads: int = 0  # 0: OpenVINO's default (all cores the latency hint picks)
    precision: str = "f32"  # INFERENCE_PRECISION_HINT, pinned so an fp32 row is really f32
    hint: str = "latency"  # PERFORMANCE_HINT

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise RuntimeFailure(
                f"openvino precision {self.precision!r} is not one of {', '.join(PRECISIONS)}."
            )
        if self.hint not in HINTS:
            raise RuntimeFailure(f"openvino hint {self.hint!r} is not one of {', '.join(HINTS)}.")

    def config(self) -> dict:
        """The compile_model properties these options stand for."""
        cfg = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": self.hint.upper()}
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = self.threads
        return cfg


class Session:
    def __init__(self, path: str, device: str = "cpu", options: Options | None = None):
        import openvino as ov

        if reason := unsupported(device):
            raise RuntimeFailure(f"{reason}.")
        self.options = options or Options()
        self.device = device
        try:
            self._compiled = ov.Core().compile_model(path, device.upper(), self.options.config())
        except RuntimeError as e:
            raise RuntimeFailure(
                f"OpenVINO could not compile {Path(path).name} for {device}: {_cause(e)}."
            ) from None
        self._request = self._compiled.create_infer_request()
        self.input_names = [i.get_any_name() for i in self._compiled.inputs]
        self.output_names = [o.get_any_name() for o in self._compiled.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Synchronous inference: infer() returns when the device has finished."""
        results = self._request.infer(feeds)
        return [np.array(results[o]) for o in self._compiled.outputs]

    def info(self) -> dict:
        import openvino as ov

        prop = self._compiled.get_property
        return {
            "runtime": NAME,
            "version": ov.get_version(),
            "device": self.device,
            "execution_devices": list(prop("EXECUTION_DEVICES")),
            "precision": prop("INFERENCE_PRECISION_HINT").get_type_name(),  # read back: what ran
            "precision_requested": self.options.precision,
            "threads": int(prop("INFERENCE_NUM_THREADS")),
            "threads_requested": self.options.threads,
            "streams": int(prop("NUM_STREAMS")),
            "performance_hint": str(prop("PERFORMANCE_HINT")),
        }


def load(path: str, device: str = "cpu", options: Options | None = None) -> Session:
    return Session(path, device, options)
