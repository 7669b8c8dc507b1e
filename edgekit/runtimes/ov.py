"""OpenVINO, reading the artifact's ONNX file directly (an .xml IR works the same way).

The precision is pinned, never left to the plugin: OpenVINO's CPU plugin runs an fp32 model in
bf16 by default on CPUs with AVX-512 BF16, so an fp32 row would silently be a bf16 row. info()
reports the precision read back from the compiled model, which is what actually ran.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def readable(path: str | Path) -> Iterator[str]:
    """The ONNX file PATH as OpenVINO's ONNX frontend reads it, for the duration of the block: PATH
    itself, or a copy with what that frontend refuses, though ONNX allows it and ONNX Runtime runs
    it, written the way it reads: an If whose condition has more than one axis (a torch export's
    `if score >= t:` on a [1, 1] score: openWakeWord's hey_jarvis; ONNX asks one element, OpenVINO
    rank 0 or 1) gets its condition reshaped to [1]; a Loop body that hands an input back as an
    output unchanged (paddle2onnx's while carries its weights that way: SLANet's table decoder;
    OpenVINO 2026.4 counts each such output as one more body input and refuses the Loop) hands
    back an Identity of it."""
    with tempfile.TemporaryDirectory() as tmp:
        fixed = _openvino_form(Path(path), Path(tmp) / "model.onnx")
        yield str(fixed or path)


def _openvino_form(src: Path, dst: Path) -> Path | None:
    """DST: SRC with a Reshape to [1] before each main-graph If whose condition's rank is not known
    to be 0 or 1, and an Identity for each Loop body output that is one of its inputs; None
    (nothing written) where there is neither."""
    import onnx

    from edgekit.compress import model_file

    model = onnx.load(str(src), load_external_data=False)
    ifs = [k for k, n in enumerate(model.graph.node) if n.op_type == "If"]
    ranks = model_file.ranks(model) if ifs else {}  # none known (an op inference lacks): reshape all
    wide = {k for k in ifs if ranks.get(model.graph.node[k].input[0], 2) > 1}
    if not wide and not _loop_passthroughs(model.graph):
        return None
    model = onnx.load(str(src))  # with its weights: the copy is a whole model
    _loop_passthroughs(model.graph, fix=True)
    if wide:
        _reshape_conditions(model, wide)
    model_file.save(model, dst)
    return dst


def _reshape_conditions(model, wide: set[int]) -> None:
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([1], np.int64), "edgekit_one_element")
    model.graph.initializer.append(shape)
    nodes = []
    for k, n in enumerate(model.graph.node):
        if k in wide:
            flat = f"{n.input[0]}_edgekit_one_element"
            nodes.append(helper.make_node("Reshape", [n.input[0], shape.name], [flat], f"{n.name}_condition"))
            n.input[0] = flat
        nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _loop_passthroughs(graph, fix: bool = False) -> int:
    """How many outputs of the Loop bodies in GRAPH (and in the subgraphs of its nodes) are body
    inputs handed back as they are; with FIX, each becomes the output of an Identity of that input."""
    from onnx import helper

    from edgekit.compress.outer_reads import subgraphs

    count = 0
    for node in graph.node:
        for g in subgraphs(node):
            count += _loop_passthroughs(g, fix)
            if node.op_type != "Loop":
                continue
            inputs, copied = {i.name for i in g.input}, set()
            for o in [o for o in g.output if o.name in inputs]:
                count += 1
                if fix:
                    copy = f"{o.name}_edgekit_out"
                    if o.name not in copied:  # one Identity where an input is handed back twice
                        g.node.append(helper.make_node("Identity", [o.name], [copy]))
                        copied.add(o.name)
                    o.name = copy
    return count


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
            with readable(path) if str(path).endswith(".onnx") else contextlib.nullcontext(path) as model:
                self._compiled = ov.Core().compile_model(model, device.upper(), self.options.config())
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
