"""Energy from tegrastats (Jetson): the input-rail parser on lines as real boards print them, and
the meter around a fake `tegrastats` on PATH (a real subprocess printing such lines). GPU memory
from NVML, through a stand-in pynvml. The RAPL tests live in test_bench_measure.py."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgekit.benchmarks import energy, gpu
from edgekit.benchmarks.worker import _gpu_memory
from edgekit.runtimes import ort

# JetPack 6, Orin Nano: rails in mW, instantaneous/average
ORIN_NANO = (
    "05-05-2025 06:05:39 RAM 2639/7620MB (lfb 9x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [1%@729,4%@729,8%@729,4%@729,5%@729,4%@729] GR3D_FREQ 0% cpu@44.156C soc2@43.781C "
    "soc0@44.687C gpu@45.968C tj@45.968C soc1@45.312C VDD_IN 5263mW/5263mW VDD_CPU_GPU_CV 717mW/717mW "
    "VDD_SOC 1794mW/1794mW"
)
# JetPack 4, Nano: POM_5V_IN without a unit
NANO = (
    "RAM 1738/3956MB (lfb 172x4MB) SWAP 0/1978MB (cached 0MB) CPU [7%@1224,0%@1224,3%@1224,7%@1224] "
    "EMC_FREQ 0% GR3D_FREQ 0% PLL@29C CPU@31C PMIC@100C GPU@31.5C AO@37C thermal@31.25C "
    "POM_5V_IN 1997/2089 POM_5V_GPU 40/57 POM_5V_CPU 203/289"
)
# JetPack 4, TX2 (the end of a line): VDD_IN without a unit, among the sub-rails
TX2 = (
    "GPU@35C BCPU@37.5C thermal@36.5C Tdiode@34.25C VDD_SYS_GPU 152/152 VDD_SYS_SOC 687/687 "
    "VDD_4V0_WIFI 0/0 VDD_IN 3056/3056 VDD_SYS_CPU 152/152 VDD_SYS_DDR 883/883"
)
# JetPack 4, AGX Xavier: only sub-rails, no total input
AGX_XAVIER = (
    "RAM 721/31927MB (lfb 7291x4MB) SWAP 0/15963MB (cached 0MB) "
    "CPU [2%@1190,0%@1190,0%@1190,0%@1190,off,off,off,off] EMC_FREQ 0%@665 GR3D_FREQ 0%@318 APE 150 "
    "MTS fg 0% bg 0% AO@37.5C GPU@37.5C Tdiode@40C PMIC@100C AUX@36C CPU@37.5C thermal@36.9C Tboard@37C "
    "GPU 0/0 CPU 311/311 SOC 932/932 CV 0/0 VDDRQ 621/621 SYS5V 1482/1482"
)


@pytest.mark.parametrize(
    ("line", "watts"), [(ORIN_NANO, 5.263), (NANO, 1.997), (TX2, 3.056), (AGX_XAVIER, None)]
)
def test_tegrastats_input_rail_is_parsed_in_watts(line, watts):
    assert energy.parse_tegrastats_power(line) == (pytest.approx(watts) if watts else None)


def _fake_tegrastats(bin_dir: Path, line: str) -> Path:
    """A `tegrastats` that prints LINE every 50 ms, whatever its arguments, until it is stopped.
    After each line it appends one to the returned log, so a test can wait until lines came."""
    bin_dir.mkdir()
    log = bin_dir / "printed.log"
    script = bin_dir / "tegrastats"
    script.write_text(f'#!/bin/sh\nwhile :; do echo "{line}"; echo >> "{log}"; sleep 0.05; done\n')
    script.chmod(0o755)
    return log


def _lines(log: Path) -> int:
    return len(log.read_text()) if log.is_file() else 0


def _measure(
    tmp_path: Path, until=lambda meter: True, timeout: float = 60
) -> tuple[energy.Meter, dict, float]:
    """Meter from start() until UNTIL(meter) holds (polled; no fixed sleep, a generous deadline),
    then stop(). Returns the meter, its record, and the seconds from before start() to after
    stop(): an upper bound on the time the meter measured, whatever the machine's speed."""
    meter = energy.Meter("cpu", root=tmp_path / "no-powercap")
    t0 = time.perf_counter()
    meter.start()
    while not until(meter):
        assert time.perf_counter() - t0 < timeout, f"not ready within {timeout} s"
        time.sleep(0.01)
    e = meter.stop(runs=10, batch=2)
    return meter, e, time.perf_counter() - t0


def test_meter_integrates_tegrastats_input_power(tmp_path, monkeypatch):
    _fake_tegrastats(tmp_path / "bin", ORIN_NANO)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path('/usr/bin')}:{Path('/bin')}")
    # 5 readings are 4 sleeps of 50 ms apart: the meter ran at least 0.2 s, at most `outer`
    meter, e, outer = _measure(tmp_path, until=lambda m: len(m.tegrastats.watts) >= 5)
    assert e["available"] is True and set(e["joules"]) == {"tegrastats_vdd_in"}
    assert 5.263 * 0.2 <= e["joules"]["tegrastats_vdd_in"] <= 5.263 * outer  # 5.263 W all along
    assert e["joules_per_inference"] == pytest.approx(e["joules"]["tegrastats_vdd_in"] / 10)
    assert e["joules_per_sample"] == pytest.approx(e["joules"]["tegrastats_vdd_in"] / 20)
    assert "input rail" in e["note"]
    assert meter.tegrastats.proc.poll() is not None  # stopped with the meter


def test_tegrastats_without_an_input_rail_says_so(tmp_path, monkeypatch):
    printed = _fake_tegrastats(tmp_path / "bin", AGX_XAVIER)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{Path('/usr/bin')}:{Path('/bin')}")
    _, e, _ = _measure(tmp_path, until=lambda m: _lines(printed) >= 3)  # lines came, none with a rail
    assert e["available"] is False
    assert e["reason"].startswith(f"no RAPL domains under {tmp_path / 'no-powercap'}; ")
    assert "tegrastats gave no input-rail reading (VDD_IN or POM_5V_IN)" in e["reason"]


def test_no_tegrastats_is_named_only_when_nothing_was_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    _, e, _ = _measure(tmp_path)
    assert e["available"] is False
    assert e["reason"].endswith("; the run is on cpu, not an NVIDIA GPU; no tegrastats (not a Jetson)")


def _fake_nvml(pid: int) -> SimpleNamespace:
    """pynvml's calls that gpu.py makes, on two GPUs: PID uses 100 MiB on GPU 0 and 200 MiB on GPU 1."""

    def processes(handle: int) -> list[SimpleNamespace]:
        return [
            SimpleNamespace(pid=pid, usedGpuMemory=(handle + 1) * 100 * 2**20),
            SimpleNamespace(pid=pid + 1, usedGpuMemory=2**30),
            SimpleNamespace(pid=pid, usedGpuMemory=None),  # the driver does not say
        ]

    return SimpleNamespace(
        NVMLError=type("NVMLError", (Exception,), {}),
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetComputeRunningProcesses=processes,
    )


def test_gpu_memory_of_this_process_from_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml(os.getpid()))
    assert gpu.process_memory_mb(os.getpid()) == pytest.approx(300.0)
    assert gpu.process_memory_mb(-5) is None
    record = _gpu_memory(ort, "cuda")
    assert record["available"] is True and record["used_mb"] == pytest.approx(300.0)
    assert "after the timed runs" in record["used_note"]
    assert _gpu_memory(ort, "cpu") == {"available": False, "reason": "the run is on cpu"}


def test_gpu_memory_without_nvml_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert gpu.process_memory_mb(os.getpid()) is None
    record = _gpu_memory(ort, "cuda")
    assert record == {"available": False, "reason": "pynvml is not installed (pip install nvidia-ml-py)"}


def test_gpu_without_an_energy_counter_says_why(tmp_path, monkeypatch):
    """A GPU whose driver has no energy counter (before Volta, some virtual GPUs): the row says so
    instead of the worker failing. The real counter is read on a GPU by test_runtimes' gpu test."""
    nvml = _fake_nvml(os.getpid())

    def unsupported(handle):
        raise nvml.NVMLError("Not Supported")

    nvml.nvmlDeviceGetTotalEnergyConsumption = unsupported
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    meter = energy.Meter("cuda", root=tmp_path / "no-powercap")
    meter.start()
    e = meter.stop(runs=10, batch=1)
    assert e["available"] is False
    assert "NVML cannot read this GPU's energy counter (Not Supported)" in e["reason"]
