"""Where and with what the numbers were measured, computed by the worker on the machine that ran
them (a device over ssh included). stdlib only: the worker ships it to devices without edgekit."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import edgekit

CPU_FLAGS = (
    "avx2",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "amx_int8",
    "asimddp",  # Arm: the dot-product instructions (SDOT/UDOT)
)
LIBRARIES = ("numpy", "onnx", "onnxruntime", "openvino", "tensorrt", "torch")


@functools.lru_cache(maxsize=1)
def host() -> dict:
    """CPU model and the flags that decide INT8/bf16 speed, cores, GPU and driver, OS, Python,
    library versions; on a board with a device tree its model, on a Jetson its L4T release and
    power mode. Cached: it does not change within a process (nvidia-smi runs once)."""
    cpu, flags = _cpu()
    facts = {
        "cpu": cpu,
        "cpu_flags": flags,
        "cpu_class": cpu_class(flags, platform.machine()),
        "cores": os.cpu_count(),
        "gpu": _gpu(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "hostname": platform.node(),
        "libraries": _versions(),
        "edgekit": edgekit.__version__,
    }
    board = _board(Path("/"))
    if board:
        facts["board"] = board
    return facts


def _cpu() -> tuple[str, list[str]]:
    """CPU model name and which of CPU_FLAGS it has, from /proc/cpuinfo where there is one (an Arm
    board's cpuinfo may have no model name: then the machine, e.g. aarch64)."""
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu, []
    lines = text.splitlines()
    cpu = next((x.split(":", 1)[1].strip() for x in lines if x.startswith("model name")), cpu)
    # a virtual machine's model name can be the bare family ("AMD EPYC"): its INT8 speed against fp32
    # differed 1.6x between two such AVX2 guests (docs/guide/quantize.md), so x86 adds family and model
    ids = {x.split(":", 1)[0].strip(): x.split(":", 1)[1].strip() for x in lines[:12] if ":" in x}
    if "cpu family" in ids and "model" in ids:
        cpu = f"{cpu} (family {ids['cpu family']}, model {ids['model']})"
    # x86 lists "flags", Arm "Features"
    have = next(
        (set(x.split(":", 1)[1].split()) for x in lines if x.startswith(("flags", "Features"))), set()
    )
    return cpu, [f for f in CPU_FLAGS if f in have]


def cpu_class(flags: list[str], machine: str) -> str:
    """The INT8 class of a CPU (edgekit.target_cpu.CLASSES) from its flags: what decides which INT8
    form is fast there and whether u8 x s8 products can saturate."""
    have = set(flags)
    if machine.lower() in ("aarch64", "arm64"):
        return "arm64-dotprod" if "asimddp" in have else "arm64"
    if machine.lower() not in ("x86_64", "amd64", "i686", "x86"):
        return f"other-{machine.lower() or 'unknown'}"
    if "amx_int8" in have:
        return "x86-amx"
    if have & {"avx512_vnni", "avx_vnni"}:
        return "x86-vnni"
    if "avx512bw" in have:
        return "x86-avx512"
    return "x86-avx2" if "avx2" in have else "x86-sse"


def _gpu() -> dict:
    """NVIDIA GPUs and driver from nvidia-smi, or why there is no answer."""
    if not shutil.which("nvidia-smi"):
        return {"available": False, "reason": "nvidia-smi is not on PATH"}
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
    try:
        out = subprocess.run(query, capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return {"available": False, "reason": f"nvidia-smi failed: {e}"}
    gpus = [
        dict(zip(("name", "driver", "memory"), map(str.strip, x.split(",")), strict=False))
        for x in out.splitlines()
    ]
    if not gpus:
        return {"available": False, "reason": "nvidia-smi lists no GPU"}
    return {"available": True, "gpus": gpus}


def _versions() -> dict:
    """Installed versions of the libraries that decide the numbers (package metadata: no imports)."""
    found = {}
    for name in LIBRARIES:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def _board(root: Path) -> dict | None:
    """An embedded board's facts under ROOT: its model from the device tree (a Jetson, a Raspberry
    Pi), and on a Jetson its L4T release and nvpmodel power mode (or why there is none); None on a
    machine without a device tree or Jetson release file."""
    model = _read(root / "proc/device-tree/model")
    release = _read(root / "etc/nv_tegra_release")
    if model is None and release is None:
        return None
    board: dict = {"model": model.rstrip("\x00").strip() if model else "unknown (no /proc/device-tree/model)"}
    if release is not None:
        board["l4t"] = l4t_version(release) or f"unreadable /etc/nv_tegra_release: {release[:80]!r}"
        board["power_mode"] = _power_mode()
    return board


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def l4t_version(release: str) -> str | None:
    """The L4T release from /etc/nv_tegra_release ("# R36 (release), REVISION: 4.3, ..." -> "36.4.3");
    the JetPack version follows from it (L4T 36.4.3 is JetPack 6.2)."""
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", release)
    return f"{m.group(1)}.{m.group(2)}" if m else None


def power_mode(text: str) -> str | None:
    """The mode name from `nvpmodel -q` ("NV Power Mode: MAXN\\n0" -> "MAXN")."""
    m = re.search(r"NV Power Mode:\s*(\S+)", text)
    return m.group(1) if m else None


def _power_mode() -> str:
    """The Jetson's current nvpmodel power mode, or why it cannot be read."""
    if not shutil.which("nvpmodel"):
        return "unknown (nvpmodel is not on PATH)"
    try:
        proc = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as e:
        return f"unknown (nvpmodel -q failed: {e})"
    return power_mode(proc.stdout) or f"unknown (nvpmodel -q said {proc.stdout.strip()[:80]!r})"
