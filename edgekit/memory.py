"""The memory budget every run over data keeps to: bytes, not a sample count.

A 640x640 detector computes over a GB of activations a sample, a small classifier a few MB: a run
of 32 samples that costs nothing on one is out of memory on the other. The budget is a quarter of
the memory available now, or `EDGEKIT_CALIB_MEMORY` (the int8 pass's `calib_memory` for its
calibration, edgekit.compress.calib_memory); a run over data (the export check, evaluation) takes
at most as many samples at once as the tensors its ONNX graph records for them fit the budget.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from edgekit.errors import EdgekitError

FRACTION = 4  # the default budget: 1/FRACTION of the memory available
FALLBACK = 2 << 30  # where the available memory cannot be read
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from an int or a size such as "512M", "2G", "1.5GiB" (powers of 1024)."""
    if isinstance(text, int):
        size = text
    else:
        m = _SIZE.fullmatch(text.strip())
        if not m:
            raise ValueError(f"{text!r} is not a size in bytes (such as 512M or 2G)")
        size = int(float(m[1]) * _UNITS[m[2].lower()])
    if size < 1:
        raise ValueError(f"a memory budget must be positive, not {text!r}")
    return size


def meminfo_available() -> int | None:
    """Bytes of memory available for new allocations (MemAvailable of /proc/meminfo); None where
    there is no /proc."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available() -> int:
    """Bytes of memory available now (MemAvailable, else the free pages, else FALLBACK)."""
    found = meminfo_available()
    if found is not None:
        return found
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return FALLBACK


def budget(configured: int | None, fraction: int = FRACTION) -> int:
    """The calibration memory budget: the configured bytes, else EDGEKIT_CALIB_MEMORY, else
    1/FRACTION of the memory available."""
    if configured is not None:
        return configured
    env = os.environ.get("EDGEKIT_CALIB_MEMORY")
    if env:
        try:
            return parse_size(env)
        except ValueError as e:
            raise EdgekitError(f"EDGEKIT_CALIB_MEMORY: {e}") from None
    return available() // fraction


def graph_bytes_per_sample(model: Path) -> int:
    """Bytes of every tensor the ONNX graph at MODEL computes for one sample, from the shapes it
    records (or shape inference gives; a symbolic axis counts once): at most what a run holds a sample."""
    import onnx

    m = onnx.load(str(model), load_external_data=False)
    if not m.graph.value_info:  # where shape inference fails (an op it does not know), the outputs count
        with contextlib.suppress(Exception):
            m = onnx.shape_inference.infer_shapes(m)
    total = 0
    for info in [*m.graph.value_info, *m.graph.output]:
        t = info.type.tensor_type
        if t.elem_type and t.HasField("shape"):
            n = 1
            for d in t.shape.dim:
                n *= d.dim_value if d.HasField("dim_value") else 1
            total += n * onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).itemsize
    return total


def run_batch(model: Path, size: int) -> int:
    """Samples one run of the ONNX model at MODEL takes: SIZE, or fewer (at least one) where the
    tensors it computes for them would not fit the memory budget."""
    return max(1, min(size, budget(None) // max(1, graph_bytes_per_sample(model))))
