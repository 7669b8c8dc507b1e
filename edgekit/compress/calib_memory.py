"""How many calibration samples may be held at once: a memory budget in bytes, not a sample count.

A histogram calibrator holds every activation of every sample it is fed until their histograms
merge; a 640x640 detector holds hundreds of MB a sample. The budget (edgekit.memory: default a
quarter of the memory available now, `EDGEKIT_CALIB_MEMORY` or Int8Config.calib_memory to set it)
divided by the activation bytes measured on one sample gives the chunk of samples fed at once.
"""

from __future__ import annotations

# a run's activations are counted twice: the arrays ONNX Runtime returns, and its own buffers while
# it computes them
COPIES = 2


def chunk_samples(bytes_per_sample: int, limit: int, fixed: int | None) -> int:
    """Samples fed at once so that their activations fit LIMIT bytes: at least one (or one batch
    of a model whose batch is FIXED), a whole number of FIXED batches."""
    n = max(1, limit // max(1, COPIES * bytes_per_sample))
    return max(fixed, n // fixed * fixed) if fixed else n
