"""One module per runtime, behind one protocol: available(), load(path, device, options) -> Session.

Runtimes are found by name (no registry): `edgekit.runtimes.<module>`. Each imports its library
lazily, so a missing runtime never breaks `import edgekit`. A runtime whose `SOURCE` is True runs
the artifact's source torch model (eager); the others run the artifact's ONNX file.
"""

import importlib

MODULES = {
    "ort": "ort",
    "onnxruntime": "ort",
    "openvino": "ov",
    "ov": "ov",
    "eager": "eager",
    "torch": "eager",
}
ALL = ("eager", "ort", "openvino")  # one name per runtime, in the order `edgekit runtimes` lists them


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
