"""GPU memory of a process, from NVML (NVIDIA GPUs). stdlib and pynvml only (where installed): the
worker imports this on any device, a Jetson included."""

from __future__ import annotations


def nvml_unavailable() -> str | None:
    """Why NVML cannot be read here (pynvml missing, no driver or no GPU), or None."""
    try:
        import pynvml
    except ImportError:
        return "pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return f"NVML sees no GPU here ({e})"
    try:
        return None if pynvml.nvmlDeviceGetCount() else "NVML sees no GPU here"
    finally:
        pynvml.nvmlShutdown()


def process_memory_mb(pid: int) -> float | None:
    """GPU memory NVML reports in use by process PID, summed over all GPUs, in MiB; None where NVML
    is absent or lists no memory for PID (in a container NVML may see the host's process ids)."""
    if nvml_unavailable():
        return None
    import pynvml

    pynvml.nvmlInit()
    try:
        used = [
            p.usedGpuMemory
            for i in range(pynvml.nvmlDeviceGetCount())
            for p in pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(i))
            if p.pid == pid and p.usedGpuMemory is not None  # None: the driver does not say
        ]
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()
    return sum(used) / 2**20 if used else None
