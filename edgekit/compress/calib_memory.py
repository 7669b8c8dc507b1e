"""How many calibration samples may be held at once: a memory budget in bytes, not a sample count.

A histogram calibrator holds every activation of every sample it is fed until their histograms
merge; a 640x640 detector holds hundreds of MB a sample. The budget (default a quarter of the
memory available now, `EDGEKIT_CALIB_MEMORY` or Int8Config.calib_memory to set it) divided by
the activation bytes measured on one sample gives the chunk of samples fed at once.
"""

from __future__ import annotations

import os
import re

from edgekit.errors import EdgekitError

FRACTION = 4  # the default budget: 1/FRACTION of the memory available
FALLBACK = 2 << 30  # where the available memory cannot be read
# a chunk's activations are held twice: as the runs returned them, and joined per tensor
COPIES = 2
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


def available() -> int:
    """Bytes of memory available now (MemAvailable of /proc/meminfo, else the free pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return FALLBACK


def budget(configured: int | None) -> int:
    """The calibration memory budget: the configured bytes, else EDGEKIT_CALIB_MEMORY, else a
    fraction of the memory available."""
    if configured is not None:
        return configured
    env = os.environ.get("EDGEKIT_CALIB_MEMORY")
    if env:
        try:
            return parse_size(env)
        except ValueError as e:
            raise EdgekitError(f"EDGEKIT_CALIB_MEMORY: {e}") from None
    return available() // FRACTION


def chunk_samples(bytes_per_sample: int, limit: int, fixed: int | None) -> int:
    """Samples fed at once so that their activations fit LIMIT bytes: at least one (or one batch
    of a model whose batch is FIXED), a whole number of FIXED batches."""
    n = max(1, limit // max(1, COPIES * bytes_per_sample))
    return max(fixed, n // fixed * fixed) if fixed else n
