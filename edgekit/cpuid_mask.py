"""Running a process as on a lesser x86 CPU class at native speed: edgekit/cpuid_mask.c, preloaded,
answers CPUID with the features that class lacks cleared, so ONNX Runtime, OpenVINO and numpy take
that class's kernels on this CPU's cores. Against qemu (edgekit.target_cpu.emulator's other way):
seconds instead of minutes, and the latency is that class's kernels on these cores (a guide to its
ratios, not that CPU's times); but only classes below this CPU's, on Linux where the CPU can fault
on CPUID and a C compiler builds the library."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("cpuid_mask.c")
ENV = "EDGEKIT_CPUID_CLASS"  # the class the library shows (read by cpuid_mask.c)
OFF = "EDGEKIT_CPUID_MASK"  # "0": never mask (emulate under qemu instead)
ORDER = ("x86-sse", "x86-avx2", "x86-avx512", "x86-vnni", "x86-amx")  # each has what those before it have
# the fingerprint's CPU flags (edgekit.benchmarks.fingerprint.CPU_FLAGS) each class lacks
_LACKS = ("avx2", "avx512f avx512bw", "avx512_vnni avx_vnni avx512_bf16", "amx_tile amx_bf16 amx_int8")
# glibc chooses its string functions from CPUID before a preloaded library runs: its own switch
_AVX512 = "-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD"
GLIBC = {"x86-sse": f"{_AVX512},-AVX,-AVX2,-FMA,-F16C", "x86-avx2": _AVX512}


def prefix(cpu_class: str, host_class: str) -> list[str] | None:
    """The command prefix that runs a process as CPU_CLASS on this machine (whose class is
    HOST_CLASS), or None where masking cannot: the class is not below this CPU's, the CPU or kernel
    cannot fault on CPUID, no C compiler builds the library, or EDGEKIT_CPUID_MASK=0."""
    if os.environ.get(OFF) == "0":
        return None
    if cpu_class not in ORDER or host_class not in ORDER or ORDER.index(cpu_class) >= ORDER.index(host_class):
        return None
    if not _faults():
        return None
    lib = _library()
    if lib is None or not _takes(str(lib)):
        return None
    preload = ":".join(p for p in (str(lib), os.environ.get("LD_PRELOAD")) if p)
    env = [f"LD_PRELOAD={preload}", f"{ENV}={cpu_class}"]
    if cpu_class in GLIBC:
        tunables = ":".join(
            t for t in (os.environ.get("GLIBC_TUNABLES"), f"glibc.cpu.hwcaps={GLIBC[cpu_class]}") if t
        )
        env.append(f"GLIBC_TUNABLES={tunables}")
    return ["env", *env]


def shown(flags: list[str], cpu_class: str) -> list[str]:
    """Of this CPU's FLAGS, those a CPU of CPU_CLASS has (what a process emulating it sees)."""
    if cpu_class not in ORDER:
        return flags
    lacks = {f for group in _LACKS[ORDER.index(cpu_class) :] for f in group.split()}
    return [f for f in flags if f not in lacks]


def _faults() -> bool:
    """Whether this is x86-64 Linux with CPUID faulting (the kernel lists "cpuid_fault")."""
    if platform.system() != "Linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return "cpuid_fault" in flags


@functools.cache
def _takes(lib: str) -> bool:
    """Whether a process started with LIB preloaded runs here: the kernel may list cpuid_fault and
    still refuse to turn it on (a container's seccomp), and the library then exits rather than run
    unmasked."""
    try:
        env = {**os.environ, "LD_PRELOAD": lib, ENV: ORDER[0]}
        return subprocess.run([shutil.which("true") or "true"], env=env, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _library() -> Path | None:
    """The built library, in edgekit's cache (built once per source), or None without a compiler
    or a writable cache."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    code = SOURCE.read_bytes()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgekit"
    lib = cache / f"cpuid-mask-{hashlib.sha256(code).hexdigest()[:16]}.so"
    if lib.is_file():
        return lib
    part = lib.with_name(f"{lib.name}.{os.getpid()}.part")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [compiler, "-O2", "-shared", "-fPIC", "-o", str(part), str(SOURCE), "-ldl"],
            capture_output=True,
            check=True,
            timeout=120,
        )
        part.replace(lib)
    except (OSError, subprocess.SubprocessError):
        part.unlink(missing_ok=True)
        return None
    return lib
