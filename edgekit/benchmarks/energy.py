"""Energy counters read around the timed loop: RAPL (CPU packages, via Linux powercap) and NVML
(NVIDIA GPUs). stdlib only (pynvml where installed): the worker imports this on any device.

Where no counter is readable the result says why instead of giving a number. RAPL measures the
whole package, so other work on the machine is counted too: the figure is an upper bound.
"""

from __future__ import annotations

from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


def rapl_packages(root: Path = POWERCAP) -> list[Path]:
    """The top-level RAPL domains (intel-rapl:N, one per package); their sub-domains (core,
    uncore, dram as intel-rapl:N:M) are parts of the package and would be counted twice."""
    return sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)


def read_rapl(root: Path = POWERCAP) -> dict[str, int] | str:
    """Microjoules per package domain, or why none can be read (no powercap, or root-only files,
    as on Linux ≥ 5.10 by default)."""
    domains = rapl_packages(root)
    if not domains:
        return f"no RAPL domains under {root}"
    try:
        return {d.name: int((d / "energy_uj").read_text()) for d in domains}
    except OSError as e:
        return f"RAPL counters under {root} are not readable ({e.strerror or e}); they are often root-only"


def rapl_joules(before: dict[str, int], after: dict[str, int], root: Path = POWERCAP) -> float:
    """Joules between two readings; a counter that wrapped past max_energy_range_uj is unwrapped."""
    total = 0
    for name, start in before.items():
        delta = after[name] - start
        if delta < 0:
            delta += int((root / name / "max_energy_range_uj").read_text())
        total += delta
    return total / 1e6


def _nvml_handle(device: str):
    """The NVML handle of GPU 0 for a GPU run, or why there is none."""
    if device not in ("cuda", "gpu"):
        return f"the run is on {device}, not an NVIDIA GPU"
    try:
        import pynvml
    except ImportError:
        return "pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(0)
    except pynvml.NVMLError as e:
        return f"NVML has no GPU here ({e})"


def _nvml_mj(handle) -> int:
    import pynvml

    return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # millijoules since the driver loaded


class Meter:
    """Reads every available counter at start() and at stop(); stop() gives the record's energy."""

    def __init__(self, device: str, root: Path = POWERCAP):
        self.device = device
        self.root = root

    def start(self) -> None:
        self.handle = _nvml_handle(self.device)
        self.rapl = read_rapl(self.root)
        self.nvml = None if isinstance(self.handle, str) else _nvml_mj(self.handle)

    def stop(self, runs: int, batch: int) -> dict:
        """{"available": true, joules per source, joules_per_inference (one run of the batch),
        joules_per_sample}, or {"available": false, "reason": ...} when nothing was readable."""
        sources: dict[str, float] = {}
        if isinstance(self.rapl, dict):
            sources["rapl_package"] = rapl_joules(self.rapl, read_rapl(self.root), self.root)
        if self.nvml is not None:
            sources["nvml_gpu"] = (_nvml_mj(self.handle) - self.nvml) / 1e3
        if not sources:
            reasons = [self.rapl, self.handle] if isinstance(self.handle, str) else [self.rapl]
            return {"available": False, "reason": "; ".join(reasons)}
        joules = sum(sources.values())
        return {
            "available": True,
            "joules": sources,
            "joules_per_inference": joules / runs,
            "joules_per_sample": joules / (runs * batch),
            **(
                {"note": "RAPL counts the whole package, other work too"} if "rapl_package" in sources else {}
            ),
        }
