"""TensorRT: runs a serialized engine (a plan: .plan or .engine) on an NVIDIA GPU (GPU 0; set
CUDA_VISIBLE_DEVICES for another).

TensorRT 10's Python API (named I/O tensors, execute_async_v3) with device memory and copies from
cuda-python; torch is never imported. run() copies the inputs in, runs the plan, copies the outputs
out and synchronises the stream before it returns, so a timed run is finished work, copies included.

A plan runs only on the TensorRT version and GPU model that built it. Where a sidecar
`<plan>.json` lies next to the plan (model.plan -> model.plan.json), as the plan builder writes it:

    {"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3"}

(`tensorrt.__version__`, and the GPU's name as CUDA reports it, cudaDeviceProp.name), load()
refuses a plan built by another TensorRT version or for another GPU, saying which.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import RuntimeFailure
from edgekit.runtimes import importable

NAME = "tensorrt"
INSTALL = "pip install 'edgekit[tensorrt]' (needs an NVIDIA GPU and driver)"
SOURCE = False  # runs the artifact's plan file
FORMATS = (".plan", ".engine")
PRECISIONS = ("f32",)  # a plan's precision was fixed when it was built
DEVICES = ("cuda", "gpu")


def available() -> bool:
    return importable("tensorrt")


@functools.cache
def _cudart():
    """cuda-python's runtime API: cuda.bindings.runtime, or cuda.cudart before cuda-python 12.6."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart
    return cudart


def _call(result):
    """A cuda-python call's values after its error code; a failed call raises with the error's name."""
    err, *values = result
    if err != _cudart().cudaError_t.cudaSuccess:
        raise RuntimeFailure(f"a CUDA call failed: {getattr(err, 'name', err)}.")
    return values[0] if len(values) == 1 else values


def _gpu_name() -> str:
    name = _call(_cudart().cudaGetDeviceProperties(0)).name
    return (name.decode() if isinstance(name, bytes) else name).rstrip("\x00")


def unsupported(device: str) -> str | None:
    """Why TensorRT cannot run on DEVICE here, or None."""
    if device not in DEVICES:
        return f"TensorRT runs on an NVIDIA GPU (device cuda), not {device}"
    if not available():
        return f"tensorrt is not installed ({INSTALL})"
    try:
        err, count = _cudart().cudaGetDeviceCount()
    except (ImportError, RuntimeError, OSError) as e:
        return f"cuda-python cannot reach CUDA here ({e}); {INSTALL}"
    if err != _cudart().cudaError_t.cudaSuccess or count == 0:
        return "TensorRT needs an NVIDIA GPU and there is none here (CUDA sees no device)"
    return None


def describe() -> dict:
    """For `edgekit runtimes`: version, and cuda when there is a GPU it can use."""
    import tensorrt as trt

    return {"version": trt.__version__, "devices": [] if unsupported("cuda") else ["cuda"]}


def check_built_for(plan: str, tensorrt_version: str, gpu: str) -> None:
    """Refuse a plan whose sidecar says another TensorRT version or GPU model built it."""
    sidecar = Path(f"{plan}.json")
    if not sidecar.is_file():
        return
    built = json.loads(sidecar.read_text())
    if built.get("tensorrt") != tensorrt_version:
        raise RuntimeFailure(
            f"the plan {plan} was built with TensorRT {built.get('tensorrt')} and this machine has "
            f"TensorRT {tensorrt_version}; rebuild the plan here."
        )
    if built.get("gpu") != gpu:
        raise RuntimeFailure(
            f"the plan {plan} was built for the GPU {built.get('gpu')} and this machine's GPU is {gpu}; "
            "rebuild the plan here."
        )


@dataclass
class Options:
    threads: int = 0  # taken like every runtime's; TensorRT runs on the GPU, CPU threads do not apply


class Session:
    def __init__(self, path: str, device: str = "cuda", options: Options | None = None):
        if reason := unsupported(device):
            raise RuntimeFailure(f"{reason}.")
        import tensorrt as trt

        self.options = options or Options()
        self.device = device
        self.gpu = _gpu_name()
        check_built_for(path, trt.__version__, self.gpu)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))  # must outlive the engine
        self._engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise RuntimeFailure(
                f"TensorRT could not load {path}: not a plan, or built by another TensorRT version or for "
                "another GPU; rebuild it here."
            )
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = {n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT}
        self.input_names = [n for n in names if n in inputs]
        self.output_names = [n for n in names if n not in inputs]
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._stream = _call(_cudart().cudaStreamCreate())
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)

    def _buffer(self, name: str, nbytes: int) -> int:
        """The tensor's device buffer, grown (and set as its address) when a shape needs more."""
        ptr, size = self._buffers.get(name, (0, 0))
        if not ptr or nbytes > size:
            if ptr:
                _call(_cudart().cudaFree(ptr))
            ptr = _call(_cudart().cudaMalloc(max(nbytes, 1)))
            self._buffers[name] = (ptr, nbytes)
            self._context.set_tensor_address(name, int(ptr))
        return ptr

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Inputs to the GPU, the plan, outputs back; returns after the stream has finished."""
        cudart = _cudart()
        kind = cudart.cudaMemcpyKind
        staged = []  # host inputs stay alive until the stream is done with them
        for name in self.input_names:
            host = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
            if not self._context.set_input_shape(name, host.shape):
                raise RuntimeFailure(
                    f"input {name} of shape {host.shape} does not fit the plan "
                    f"({tuple(self._engine.get_tensor_shape(name))}, -1: dynamic within its build profile)."
                )
            ptr = self._buffer(name, host.nbytes)
            _call(
                cudart.cudaMemcpyAsync(
                    ptr, host.ctypes.data, host.nbytes, kind.cudaMemcpyHostToDevice, self._stream
                )
            )
            staged.append(host)
        outputs = []
        for name in self.output_names:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeFailure(
                    f"output {name} has a data-dependent shape {shape}, which edgekit cannot run."
                )
            outputs.append(np.empty(shape, self._dtypes[name]))
            self._buffer(name, outputs[-1].nbytes)
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeFailure("TensorRT failed to enqueue the plan (see its log above).")
        for name, out in zip(self.output_names, outputs, strict=True):
            src = self._buffers[name][0]
            _call(
                cudart.cudaMemcpyAsync(
                    out.ctypes.data, src, out.nbytes, kind.cudaMemcpyDeviceToHost, self._stream
                )
            )
        _call(cudart.cudaStreamSynchronize(self._stream))
        return outputs

    def info(self) -> dict:
        import tensorrt as trt

        return {
            "runtime": NAME,
            "version": trt.__version__,
            "device": self.device,
            "gpu": self.gpu,
            "threads": None,  # runs on the GPU
            "threads_requested": self.options.threads,
            "precision": "as built",  # the plan's layer precisions were chosen by its builder
            "io_dtypes": {n: str(d) for n, d in self._dtypes.items()},
        }

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter exit CUDA may already be gone
            for ptr, _ in self._buffers.values():
                _cudart().cudaFree(ptr)
            _cudart().cudaStreamDestroy(self._stream)


def load(path: str, device: str = "cuda", options: Options | None = None) -> Session:
    return Session(path, device, options)
