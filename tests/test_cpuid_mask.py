"""edgekit.cpuid_mask: a process runs as a lesser x86 CPU class at native speed, CPUID showing only
what that class has, so the libraries take that class's kernels; `bench --emulate-cpu` uses it
where it can and then reports latency."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from edgekit import cpuid_mask
from edgekit.artifact import read_manifest
from edgekit.benchmarks import fingerprint

OWN = fingerprint.host()["cpu_class"]
BELOW = cpuid_mask.ORDER[: cpuid_mask.ORDER.index(OWN)] if OWN in cpuid_mask.ORDER else ()
needs_mask = pytest.mark.skipif(
    not BELOW or cpuid_mask.prefix(BELOW[-1], OWN) is None,
    reason=f"CPUID masking needs x86-64 Linux with 'cpuid_fault', a C compiler, a class below {OWN}",
)
FEATURES = (
    "import json; from numpy._core._multiarray_umath import __cpu_features__ as f; print(json.dumps(f))"
)


def _features(prefix: list[str], **env: str) -> dict[str, bool]:
    """The CPU features numpy's own CPUID probe finds in a process started under PREFIX."""
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", FEATURES],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_mask
@pytest.mark.parametrize("cpu_class", cpuid_mask.ORDER[:-1])
def test_a_masked_process_sees_only_what_its_class_has(cpu_class):
    if cpu_class not in BELOW:
        pytest.skip(f"{cpu_class} is not below this CPU's class ({OWN})")
    own, seen = _features([]), _features(cpuid_mask.prefix(cpu_class, OWN))
    assert seen["SSE42"] == own["SSE42"]
    expected = {
        "x86-sse": {"AVX": False, "FMA3": False, "AVX2": False, "AVX512F": False},
        "x86-avx2": {"AVX": True, "FMA3": True, "AVX2": True, "AVX512F": False},
        "x86-avx512": {"AVX2": True, "AVX512F": True, "AVX512_SKX": own["AVX512_SKX"], "AVX512VNNI": False},
        # Sapphire Rapids' AVX-512 FP16 goes with AMX: a Zen 4's or Ice Lake's VNNI stays
        "x86-vnni": {"AVX512F": own["AVX512F"], "AVX512VNNI": own["AVX512VNNI"], "AVX512_SPR": False},
    }[cpu_class]
    assert {k: seen[k] for k in expected} == expected


@needs_mask
def test_a_program_with_its_own_segfault_handler_still_runs_masked():
    # Python's faulthandler installs a SIGSEGV handler at startup, after the mask's: the mask keeps
    # answering CPUID and hands the program's other faults to it
    prefix = cpuid_mask.prefix(BELOW[-1], OWN)
    assert _features(prefix, PYTHONFAULTHANDLER="1") == _features(prefix)
    crash = "import ctypes; print('before', flush=True); ctypes.string_at(0)"
    proc = subprocess.run(
        [*prefix, sys.executable, "-X", "faulthandler", "-c", crash],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -11 and proc.stdout == "before\n"
    assert "Fatal Python error: Segmentation fault" in proc.stderr  # faulthandler got the real fault


def test_an_emulated_class_shows_only_its_own_flags():
    flags = ["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8"]
    assert cpuid_mask.shown(flags, "x86-sse") == []
    assert cpuid_mask.shown(flags, "x86-avx2") == ["avx2"]
    assert cpuid_mask.shown(flags, "x86-avx512") == ["avx2", "avx512f", "avx512bw"]
    assert cpuid_mask.shown(flags, "x86-vnni") == flags[:6]
    assert cpuid_mask.shown(flags, "x86-amx") == flags


def test_only_classes_below_this_cpu_can_be_shown():
    for cpu_class in cpuid_mask.ORDER[cpuid_mask.ORDER.index(OWN) if OWN in cpuid_mask.ORDER else 0 :]:
        assert cpuid_mask.prefix(cpu_class, OWN) is None
    assert cpuid_mask.prefix("arm64", OWN) is None


@needs_mask
def test_the_mask_refuses_to_run_a_process_it_cannot_mask():
    prefix = cpuid_mask.prefix(BELOW[-1], OWN)
    env = {**os.environ, **dict(p.split("=", 1) for p in prefix[1:]), "EDGEKIT_CPUID_CLASS": "x86-amx"}
    proc = subprocess.run([sys.executable, "-c", "print('ran')"], capture_output=True, text=True, env=env)
    assert proc.returncode == 70 and "ran" not in proc.stdout
    assert "EDGEKIT_CPUID_CLASS=x86-amx is not a class CPUID masking can show" in proc.stderr


@needs_mask
def test_bench_as_a_lesser_cpu_runs_natively_and_reports_latency(edgekit, digits, tmp_path):
    records = tmp_path / "rows.json"
    proc = edgekit("bench", digits.fp32, "--emulate-cpu", BELOW[-1], "--runs", 5, "--json", records)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads(records.read_text())
    assert row["emulated"]["by"] == "cpuid-mask" and row["emulated"]["timing"] is True
    assert row["host"]["cpu_class"] == BELOW[-1]
    assert row["host"]["cpu_flags"] == cpuid_mask.shown(fingerprint.host()["cpu_flags"], BELOW[-1])
    assert "amx_int8" not in row["host"]["cpu_flags"]  # nothing the class lacks
    assert row["latency"]["median_ms"] > 0 and row["latency"]["count"] == 5
    out = " ".join(proc.stdout.split())
    assert f"run as {BELOW[-1]} with this CPU's other features hidden from CPUID" in out
    assert f"emulated {BELOW[-1]}" not in out  # the latency columns are shown, not blanked


@needs_mask
def test_a_timing_on_a_lesser_class_runs_in_a_process_that_shows_it(digits):
    import numpy as np
    import onnxruntime as ort

    from edgekit import speedup
    from edgekit.data import Samples

    assert speedup.kernels() == speedup.kernels(OWN) == speedup.Kernels(OWN)
    on = speedup.kernels(BELOW[-1])
    assert on.cpu_class == BELOW[-1] and on.prefix == cpuid_mask.prefix(BELOW[-1], OWN)
    model = digits.fp32 / "model.onnx"
    spec = ort.InferenceSession(str(model)).get_inputs()[0]
    x = np.random.default_rng(0).random([1, *spec.shape[1:]], dtype=np.float32)
    record = speedup.measure(model, model, Samples({spec.name: x}, None), None, "ort", on)
    assert record["kernels"] == BELOW[-1] and record["fp32_ms"] > 0 and record["ms"] > 0


@needs_mask
def test_a_saturating_form_forced_onto_an_avx2_target_fails_its_check_as_that_cpu_would(
    edgekit, digits, tmp_path
):
    if "x86-avx2" not in BELOW:
        pytest.skip(f"x86-avx2 is not below this CPU's class ({OWN})")
    out = tmp_path / "forced"
    proc = edgekit(
        "compress", digits.onnx, "--int8", "--calib", digits.calib, "--eval", digits.test,
        "--target-cpu", "x86-avx2", "--int8-form", "u8s8", "--no-adaround", "--no-range-search", "-o", out,
    )  # fmt: skip
    # on this CPU's kernels the u8s8 digits keep 100 % of fp32's top-1; an AVX2 CPU's saturate (~81 %)
    assert proc.returncode == 1, proc.stderr
    made = read_manifest(out).target_cpu
    assert made["verified_on"] == "x86-avx2" and "CPUID showing only x86-avx2's features" in made["note"]
    kept = read_manifest(out).verification["int8"]["fidelity"]["output_0"]["top1_agreement"]
    assert kept < 0.9, kept
