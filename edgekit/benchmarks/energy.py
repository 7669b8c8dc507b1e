"""Energy read around the timed loop: RAPL (CPU packages, via Linux powercap), NVML (NVIDIA GPUs)
and tegrastats (Jetson boards). stdlib only (pynvml where installed): the worker imports this on
any device.

Where nothing is readable the result says why instead of giving a number. RAPL measures the whole
package and tegrastats the board's input rail, so other work on the machine is counted too: the
figures are upper bounds.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
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
    if device not in ("cuda", "gpu", "tensorrt"):
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


# The board's total input rail: "VDD_IN 4523mW/4523mW" (JetPack 5/6), "VDD_IN 5000/5000" (JetPack 4
# TX2, Xavier NX) or "POM_5V_IN 2310/2310" (JetPack 4 Nano): instantaneous/average milliwatts.
INPUT_RAIL = re.compile(r"\b(?:VDD_IN|POM_5V_IN) (\d+)(?:mW)?/\d+")


def parse_tegrastats_power(line: str) -> float | None:
    """The board's instantaneous input power in watts from one tegrastats line; None where the line
    has no total input rail (AGX Xavier and AGX Orin list only their sub-rails)."""
    m = INPUT_RAIL.search(line)
    return int(m.group(1)) / 1e3 if m else None


class Tegrastats:
    """`tegrastats --interval 100` in the background; joules = mean input power × elapsed time. On a
    Jetson the input rail feeds CPU, GPU and memory alike, so it counts every device's work."""

    def __init__(self, interval_ms: int = 100):
        cmd = ["tegrastats", "--interval", str(interval_ms)]
        if shutil.which("stdbuf"):  # one line at a time into the pipe, not a 4 KiB stdio buffer
            cmd = ["stdbuf", "-oL", *cmd]
        self.watts: list[float] = []
        self.start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            watts = parse_tegrastats_power(line)
            if watts is not None:
                self.watts.append(watts)

    def stop(self) -> float | str:
        """Joules since the start, or why there is no figure."""
        elapsed = time.perf_counter() - self.start
        self.proc.terminate()
        self.proc.wait(timeout=5)
        self.reader.join(timeout=2)
        if not self.watts:
            return f"tegrastats gave no input-rail reading (VDD_IN or POM_5V_IN) in {elapsed:.2f} s"
        return sum(self.watts) / len(self.watts) * elapsed


NOTES = {
    "rapl_package": "RAPL counts the whole package, other work too",
    "tegrastats_vdd_in": "tegrastats reads the board's input rail, all its work; per inference uses it alone",
}


class Meter:
    """Reads every available counter at start() and at stop(); stop() gives the record's energy."""

    def __init__(self, device: str, root: Path = POWERCAP):
        self.device = device
        self.root = root

    def start(self) -> None:
        self.handle = _nvml_handle(self.device)
        self.tegrastats = Tegrastats() if shutil.which("tegrastats") else None
        self.rapl = read_rapl(self.root)
        self.nvml = None
        if not isinstance(self.handle, str):
            import pynvml

            try:  # no energy counter before Volta, and none on some virtual GPUs
                self.nvml = _nvml_mj(self.handle)
            except pynvml.NVMLError as e:
                self.handle = f"NVML cannot read this GPU's energy counter ({e})"

    def stop(self, runs: int, batch: int) -> dict:
        """{"available": true, joules per source, joules_per_inference (one run of the batch),
        joules_per_sample}, or {"available": false, "reason": ...} when nothing was readable."""
        sources: dict[str, float] = {}
        board = self.tegrastats.stop() if self.tegrastats else "no tegrastats (not a Jetson)"
        if isinstance(self.rapl, dict):
            sources["rapl_package"] = rapl_joules(self.rapl, read_rapl(self.root), self.root)
        if self.nvml is not None:
            sources["nvml_gpu"] = (_nvml_mj(self.handle) - self.nvml) / 1e3
        if not isinstance(board, str):
            sources["tegrastats_vdd_in"] = board
        if not sources:
            reasons = [self.rapl, self.handle] if isinstance(self.handle, str) else [self.rapl]
            return {"available": False, "reason": "; ".join([*reasons, board])}
        # the board's input rail already holds the CPU's and GPU's share: adding them would count twice
        joules = board if "tegrastats_vdd_in" in sources else sum(sources.values())
        notes = [NOTES[name] for name in sources if name in NOTES]
        return {
            "available": True,
            "joules": sources,
            "joules_per_inference": joules / runs,
            "joules_per_sample": joules / (runs * batch),
            **({"note": "; ".join(notes)} if notes else {}),
        }
