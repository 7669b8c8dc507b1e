"""torch eager: runs the artifact's *source* torch model (not its ONNX), on CPU or CUDA.

The runner gives it the source file with Options.load: the input shapes the export loaded it with
(the manifest's `load` record), and the `--arch` / `--trust-pickle` the user gave on the command line
or in edgekit.yaml: never the manifest's, since an artifact must not grant the right to import a module
or unpickle a file. This is the only runtime that imports torch.
Options.precision bf16/f16 casts the module and its float inputs (torch's own .to(dtype)); info()
reports the dtype of the weights that ran. f32 on CUDA is IEEE fp32: torch's default runs cuDNN
convolutions in TF32 (10 mantissa bits), which would make an "f32" row on a GPU a lower precision.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgekit.artifact import LoadOptions
from edgekit.errors import RuntimeFailure
from edgekit.runtimes import importable

NAME = "eager"
INSTALL = "pip install torch"
SOURCE = True  # runs the artifact's source torch model
FORMATS: tuple[str, ...] = ()  # no model file of the artifact: it runs the source
PRECISIONS = ("f32", "bf16", "f16")
DEVICES = ("cpu", "cuda")


def available() -> bool:
    return importable("torch")


def unsupported(device: str) -> str | None:
    """Why eager cannot run on DEVICE here, or None."""
    if device not in DEVICES:
        return f"the eager runtime runs on cpu or cuda, not {device}"
    if not available():
        return f"torch is not installed ({INSTALL})"
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device here"
    return None


def describe() -> dict:
    """For `edgekit runtimes`: version, and cuda when this torch build sees a GPU."""
    import torch

    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    return {"version": torch.__version__, "devices": devices}


@dataclass
class Options:
    threads: int = 0  # 0: torch's default (intra-op threads = physical cores)
    # the export's input shapes and dtype, with the user's own --arch and --trust-pickle
    load: LoadOptions = field(default_factory=LoadOptions)
    precision: str = "f32"  # f32: the weights as they are; bf16/f16: cast module and float inputs

    def __post_init__(self) -> None:
        if isinstance(self.load, dict):  # as a worker's job carries it
            self.load = LoadOptions.model_validate(self.load)
        if self.precision not in PRECISIONS:
            raise RuntimeFailure(f"eager precision {self.precision!r} is not one of {', '.join(PRECISIONS)}.")


def _ieee_fp32(torch) -> None:
    """TF32 off for CUDA matmuls, convolutions and RNNs: torch >= 2.9's fp32_precision settings, or
    the allow_tf32 flags before it (the two APIs must not be mixed in one process)."""
    if hasattr(torch.backends.cudnn, "conv"):
        torch.backends.cuda.matmul.fp32_precision = "ieee"
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cudnn.rnn.fp32_precision = "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


class Session:
    def __init__(self, path: str, device: str = "cpu", options: Options | None = None):
        import torch

        from edgekit.model import load_model

        if reason := unsupported(device):
            raise RuntimeFailure(f"{reason}.")
        self.options = options or Options()
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        loaded = load_model(path, self.options.load)
        self.device = device
        self.input_names = loaded.input_spec.names
        names = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
        self._cast = None if self.options.precision == "f32" else names[self.options.precision]
        if device == "cuda" and self._cast is None:
            _ieee_fp32(torch)
        self._module = loaded.module.to(device=device, dtype=self._cast)
        weights = next((p.dtype for p in self._module.parameters()), self._cast or torch.float32)
        self.precision = {v: k for k, v in names.items()}.get(weights, str(weights))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Outputs as numpy; on CUDA the device is synchronised first, so a timed run is complete."""
        import torch

        from edgekit.model import flatten_outputs

        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self.input_names]
        if self._cast is not None:
            args = [a.to(self._cast) if a.is_floating_point() else a for a in args]
        with torch.inference_mode():
            out = flatten_outputs(self._module(*args))
        if self.device == "cuda":
            torch.cuda.synchronize()
        return [t.detach().float().cpu().numpy() for t in out]

    def info(self) -> dict:
        import torch

        return {
            "runtime": NAME,
            "version": torch.__version__,
            "device": self.device,
            "threads": torch.get_num_threads(),
            "threads_requested": self.options.threads,
            "precision": self.precision,  # of the weights that ran
            "precision_requested": self.options.precision,
        }


def load(path: str, device: str = "cpu", options: Options | None = None) -> Session:
    return Session(path, device, options)
