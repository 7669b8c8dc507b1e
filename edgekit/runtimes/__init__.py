"""One module per runtime, behind one protocol: available(), load(path, device, options) -> Session.

Runtimes are found by name (no registry): `edgekit.runtimes.<name>`. Each imports its library
lazily, so a missing runtime never breaks `import edgekit`.
"""

import importlib

MODULES = {"ort": "ort", "onnxruntime": "ort"}


def get(name: str):
    from edgekit.errors import EdgekitError

    if name not in MODULES:
        raise EdgekitError(f"--runtime {name!r} is not known; use one of: {', '.join(sorted(set(MODULES)))}.")
    return importlib.import_module(f"edgekit.runtimes.{MODULES[name]}")
