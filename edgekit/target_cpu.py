"""The CPU an INT8 artifact is made for: its class, and the INT8 form that is fast there and cannot
saturate.

On x86 without VNNI or AMX, INT8 kernels multiply u8 x s8 pairs with `vpmaddubsw`, which adds two
products in 16 bits and saturates (255 * 127 * 2 > 32767): ONNX Runtime's GEMM-based convolutions,
Gemm and MatMul do, and so do OpenVINO's (oneDNN) kernels. Their depthwise kernels widen to 32 bits
first and do not. So for such a CPU every layer but the depthwise convolutions gets weights whose
adjacent input-channel pairs cannot overflow (edgekit.compress.weight_pairs; the usual fix, 7-bit
weights, is the form u8s8-w7) and runs on the same fast kernels; s8 x s8 does not help (x86
kernels shift s8 activations to u8) and u8 x u8 runs on ONNX Runtime's slow path. Measured under
an emulated AVX2 CPU in tests/test_target_cpu.py and bench/int8_cpu.py.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from typing import Literal

from edgekit.errors import EdgekitError


@dataclass(frozen=True)
class CpuClass:
    saturates: bool  # u8 x s8 pairs add in 16 bits there
    examples: str
    qemu_cpu: str | None = None  # a qemu-x86_64 CPU model of this class, to verify numerics on another CPU


CLASSES: dict[str, CpuClass] = {
    "x86-sse": CpuClass(True, "x86 without AVX2 (pre-2013 Intel, Atom)", "Nehalem"),
    "x86-avx2": CpuClass(
        True, "AVX2, no AVX-512/VNNI: AMD Zen 1-3, Intel Haswell to Comet Lake", "EPYC-Milan"
    ),
    "x86-avx512": CpuClass(True, "AVX-512 without VNNI: Intel Skylake-SP/X"),
    "x86-vnni": CpuClass(False, "AVX-512 VNNI or AVX-VNNI: Cascade/Ice Lake, Alder Lake and newer, Zen 4/5"),
    "x86-amx": CpuClass(False, "AMX INT8: Intel Sapphire Rapids and newer Xeons"),
    "arm64": CpuClass(False, "Armv8 without dot product: Cortex-A53/A72 (Raspberry Pi 3/4)"),
    "arm64-dotprod": CpuClass(False, "Armv8.2+ with SDOT/UDOT: Cortex-A76/A78 (Raspberry Pi 5, Jetson Orin)"),
}

ENV = "EDGEKIT_TARGET_CPU"
# the forms whose products cannot overflow a 16-bit pair sum (NNCF's: as edgekit.export.openvino names it)
CANNOT_SATURATE = ("u8s8-pair", "u8s8-w7", "u8s8-w7all", "u8u8", "nncf overflow_fix=enable")
Form = Literal["u8s8", "u8s8-pair", "u8s8-w7", "u8s8-w7all", "u8s8-w7first", "u8u8", "s8s8"]
FORMS: dict[str, tuple[str, dict]] = {
    # name: (what it is, the Int8Config fields that make it)
    "u8s8": (
        "u8 activations x s8 weights: the fastest form with VNNI/AMX or on Arm",
        {"activation_type": "uint8", "weight_type": "int8", "reduce_range": "none"},
    ),
    "u8s8-w7": (
        "u8 activations x s8 weights, 7-bit weights on every layer but the depthwise convolutions: "
        "cannot saturate, same kernels as u8s8",
        {"activation_type": "uint8", "weight_type": "int8", "reduce_range": "gemm"},
    ),
    "u8s8-pair": (
        "u8 activations x s8 weights, 8-bit weights scaled per channel so that no pair of adjacent "
        "input-channel weights can saturate (7 bits where a layer's pairing is unknown); depthwise "
        "convolutions untouched: cannot saturate, same kernels as u8s8",
        {"activation_type": "uint8", "weight_type": "int8", "reduce_range": "pairs"},
    ),
    "u8s8-w7all": (
        "u8 x s8 with 7-bit weights on every layer (ONNX Runtime's reduce_range)",
        {"activation_type": "uint8", "weight_type": "int8", "reduce_range": "all"},
    ),
    "u8s8-w7first": (
        "u8 x s8 with 7-bit weights on the first layer only (NNCF's default overflow fix); can still "
        "saturate deeper in the network",
        {"activation_type": "uint8", "weight_type": "int8", "reduce_range": "first"},
    ),
    "u8u8": (
        "u8 activations x u8 weights: cannot saturate; ONNX Runtime runs it on a slow path",
        {"activation_type": "uint8", "weight_type": "uint8", "reduce_range": "none"},
    ),
    "s8s8": (
        "s8 activations x s8 weights (ONNX Runtime's quantize_static default); saturates like u8s8 on x86",
        {"activation_type": "int8", "weight_type": "int8", "reduce_range": "none"},
    ),
}


@dataclass(frozen=True)
class TargetCpu:
    """The class an artifact is made for, and where that came from (recorded in the manifest)."""

    cpu_class: str
    source: str  # "this machine", "--target-cpu", "host user@device"
    cpu: str | None = None  # the model name, where the class was read off a machine
    flags: tuple[str, ...] = ()

    @property
    def saturates(self) -> bool:
        return CLASSES[self.cpu_class].saturates if self.cpu_class in CLASSES else False

    def record(self) -> dict:
        out = {"class": self.cpu_class, "from": self.source, "u8s8_saturates": self.saturates}
        if self.cpu:
            out.update(cpu=self.cpu, flags=list(self.flags))
        return out


def check_class(name: str, flag: str = "--target-cpu") -> str:
    if name not in CLASSES:
        raise EdgekitError(
            f"{flag} {name!r} is not a CPU class edgekit knows; use one of {', '.join(CLASSES)}."
        )
    return name


def from_host(host: dict, source: str) -> TargetCpu:
    """The target read off a fingerprint (edgekit.benchmarks.fingerprint.host, here or on a device)."""
    return TargetCpu(host["cpu_class"], source, host.get("cpu"), tuple(host.get("cpu_flags", ())))


def resolve(
    name: str | None = None, host_fingerprint: dict | None = None, host: str | None = None
) -> TargetCpu:
    """The CPU an artifact is made for: a class named with --target-cpu, a --host device's
    fingerprint, the EDGEKIT_TARGET_CPU environment variable (a CI job that builds for a fleet), or
    else this machine."""
    if name:
        return TargetCpu(check_class(name), "--target-cpu")
    if host_fingerprint is not None:
        return from_host(host_fingerprint, f"host {host}")
    if os.environ.get(ENV):
        return TargetCpu(check_class(os.environ[ENV], ENV), ENV)
    return here()


def here() -> TargetCpu:
    """This machine's class, read off its CPU flags."""
    from edgekit.benchmarks import fingerprint

    return from_host(fingerprint.host(), "this machine")


def fused_here(form: str | None, target: str | None) -> bool:
    """Whether ONNX Runtime's fused INT8 kernels on this machine compute FORM (a FORMS name; None or
    "custom" for an unnamed combination) as the TARGET class does: not where this CPU saturates 16-bit
    pair sums, FORM can and TARGET does not (VNNI, AMX, Arm, a GPU). A model fitted or checked against
    its outputs is then run with its Q/DQ as written, which is what such a target computes (up to
    float rounding), not this CPU's saturation."""
    target_saturates = CLASSES[target].saturates if target in CLASSES else False
    return not here().saturates or form in CANNOT_SATURATE or target_saturates


def auto_form(target: TargetCpu) -> Form:
    """The fastest INT8 form that holds on TARGET, on ONNX Runtime and OpenVINO alike."""
    return "u8s8-pair" if target.saturates else "u8s8"


def mismatch(made_for: dict | None, running: str | None, form: str | None) -> str | None:
    """One sentence when an INT8 artifact runs on a CPU class it was not made for, else None."""
    if not made_for or not running or made_for.get("class") == running or running not in CLASSES:
        return None
    made = made_for["class"]
    if CLASSES[running].saturates and form not in CANNOT_SATURATE:
        saturates = "INT8 may saturate"
        return f"made for {made}, running on {running}: {saturates}; re-compress with --target-cpu {running}"
    return f"made for {made}, running on {running}: re-compress with --target-cpu {running} for its form"


@dataclass(frozen=True)
class Emulation:
    """How a process runs as on another CPU class here: PREFIX (the command before it), BY
    ("cpuid-mask": natively, CPUID showing only that class's features, edgekit.cpuid_mask; "qemu":
    user-mode emulation), and whether its latency means something (TIMING: that class's kernels on
    this machine's cores under the mask; the emulator's own speed under qemu)."""

    cpu_class: str
    prefix: list[str]
    by: Literal["cpuid-mask", "qemu"]
    timing: bool
    qemu_cpu: str | None = None

    def record(self) -> dict:
        """What a bench record says about it."""
        if self.by == "qemu":
            note = "outputs as on that CPU; latency is the emulator's, not a measurement"
            return {"cpu_class": self.cpu_class, "by": self.by, "qemu_cpu": self.qemu_cpu, "note": note}
        note = (
            "outputs as on that CPU; latency is that CPU class's kernels on this machine's cores: "
            "a guide to ratios between artifacts, not that CPU's times"
        )
        return {"cpu_class": self.cpu_class, "by": self.by, "timing": True, "note": note}


def emulator(cpu_class: str) -> Emulation:
    """How to run a process as on a CPU of CPU_CLASS here: natively with CPUID masked where this
    CPU's class is above it and can fault on CPUID, else under qemu's user-mode emulation; one
    sentence saying why neither can."""
    from edgekit import cpuid_mask
    from edgekit.benchmarks import fingerprint

    cls = CLASSES.get(check_class(cpu_class, "--emulate-cpu"))
    own = fingerprint.host()["cpu_class"]
    masked = cpuid_mask.prefix(cpu_class, own)
    if masked is not None:
        return Emulation(cpu_class, masked, "cpuid-mask", True)
    if platform.machine().lower() not in ("x86_64", "amd64") or cls.qemu_cpu is None:
        lesser = ", ".join(cpuid_mask.ORDER[: cpuid_mask.ORDER.index(own)]) if own in cpuid_mask.ORDER else ""
        raise EdgekitError(
            f"{cpu_class} cannot be emulated here: qemu emulates "
            f"{', '.join(k for k, v in CLASSES.items() if v.qemu_cpu)} on an x86-64 machine only (it lacks "
            "AVX-512 and AMX), and CPUID masking shows only the classes below this CPU's"
            + (f" ({lesser})" if lesser else "")
            + " on Linux, where the CPU can fault on CPUID ('cpuid_fault' in /proc/cpuinfo) and a C "
            "compiler (cc) is installed."
        )
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise EdgekitError(
            "--emulate-cpu needs qemu's user-mode emulator here; install it with: apt-get install qemu-user."
        )
    return Emulation(cpu_class, [qemu, "-cpu", cls.qemu_cpu], "qemu", False, cls.qemu_cpu)
