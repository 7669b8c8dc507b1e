"""One module per runtime, behind one protocol.

Every runtime module has:
- NAME, INSTALL (the pip command that adds it), SOURCE (True: it runs the artifact's source torch
  model, as eager does; False: it runs a model file), FORMATS (the model-file suffixes it runs),
  PRECISIONS (what Options.precision may ask for; the first, "f32", means no lowering: the
  model's own precision);
- available() -> bool: its library imports here;
- unsupported(device) -> str | None: why it cannot use DEVICE on this machine, or None (cheap,
  never raises; the runner makes a reason into a not-applicable row);
- describe() -> dict: version and the devices it can use here, for `edgekit runtimes`;
- Options (a dataclass with threads and precision; eager's also holds the LoadOptions of the
  source it runs), load(path, device, options) -> Session, whose run(feeds) returns the outputs as
  numpy once the device work is finished, and info() records the device, threads, options and the
  precision that actually ran. What cannot load or run here (a device, the install, the model file,
  an option) raises edgekit.errors.RuntimeFailure: one sentence, a failed row in a benchmark.

Runtimes are found by name (no registry): `edgekit.runtimes.<module>`. Each imports its library
lazily, so a missing runtime never breaks `import edgekit`.
"""

import importlib

MODULES = {
    "ort": "ort",
    "onnxruntime": "ort",
    "openvino": "ov",
    "ov": "ov",
    "eager": "eager",
    "torch": "eager",
    "tensorrt": "trt",
    "trt": "trt",
}
# one name per runtime, in the order `edgekit runtimes` lists them
ALL = ("eager", "ort", "openvino", "tensorrt")


def get(name: str):
    from edgekit.errors import EdgekitError

    if name not in MODULES:
        raise EdgekitError(f"--runtime {name!r} is not known; use one of: {', '.join(sorted(set(MODULES)))}.")
    return importlib.import_module(f"edgekit.runtimes.{MODULES[name]}")


def importable(library: str) -> bool:
    """Whether a runtime's library imports here; a broken install counts as absent."""
    try:
        importlib.import_module(library)
    except ImportError:
        return False
    return True
