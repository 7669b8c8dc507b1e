"""`edgekit build --target openvino`: real IRs from the tiny ResNet's fp32 and INT8 artifacts, verified
against their parent, benchmarked with the precision they were verified at."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from artifacts import tiny_pair

from edgekit.artifact import read_manifest, sha256_file
from edgekit.target_cpu import CLASSES, resolve


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp("build-ov"))


def _build(edgekit, parent, out, *args):
    r = edgekit("build", parent, "--target", "openvino", "-o", out, *args)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def fp32_ir(pair, edgekit, tmp_path_factory):
    """The fp32 artifact's IR, built once; returns (CompletedProcess, directory, parent hash before)."""
    before = sha256_file(pair.fp32 / "model.onnx")
    out = tmp_path_factory.mktemp("fp32-ir") / "ov"
    return _build(edgekit, pair.fp32, out, "--eval", pair.eval), out, before


def test_fp32_ir_matches_its_parent(pair, fp32_ir):
    r, out, before = fp32_ir
    assert r.returncode == 0, r.stdout + r.stderr
    m = read_manifest(out)
    assert m.model_file == "model.xml" and m.parent == str(pair.fp32.absolute())
    assert m.inference_precision == "f32" and m.passes[-1].summary["weights"] == "fp32"
    v = m.verification["openvino"]
    assert v["data"] == "eval" and v["samples"] == 48 and v["device"] == "CPU"
    assert v["fidelity"]["output_0"]["sqnr_db"] > 60 and v["top1"] == 1.0  # labels: fp32's own top-1
    assert m.passes[-1].name == "build" and m.passes[0].name == "export"
    assert sha256_file(pair.fp32 / "model.onnx") == before  # the parent is untouched
    assert "openvino check" in r.stdout


def test_fp16_weights_halve_the_file_and_fp32_keeps_them(pair, fp32_ir, edgekit, tmp_path):
    r = _build(edgekit, pair.fp32, tmp_path / "ov16", "--precision", "fp16")
    assert r.returncode == 0, r.stdout + r.stderr
    m = read_manifest(tmp_path / "ov16")
    assert m.passes[-1].summary["weights"] == "fp16"
    assert m.verification["openvino"]["data"].startswith("random inputs")
    # save_model compresses to fp16 unless told not to: the fp32 IR must hold twice the bytes.
    fp16_bytes = (tmp_path / "ov16" / "model.bin").stat().st_size
    fp32_bytes = (fp32_ir[1] / "model.bin").stat().st_size
    assert 1.9 < fp32_bytes / fp16_bytes < 2.1


@pytest.mark.usefixtures("needs_bf16")  # OpenVINO runs a bf16 request in f32 without it
def test_bf16_ir_is_verified_and_benchmarked_in_bf16(pair, edgekit, tmp_path):
    out = tmp_path / "ovbf16"
    r = _build(edgekit, pair.fp32, out, "--precision", "bf16", "--eval", pair.eval)
    assert r.returncode == 0, r.stdout + r.stderr
    m = read_manifest(out)
    assert m.inference_precision == "bf16"
    assert 20 < m.verification["openvino"]["fidelity"]["output_0"]["sqnr_db"] < 60
    # The IR itself carries the hint, for users who load it with OpenVINO directly.
    xml = (out / "model.xml").read_text()
    assert re.search(r'<INFERENCE_PRECISION_HINT value="bf16"', xml), xml[-800:]
    records = tmp_path / "r.json"
    r = edgekit("bench", out, "--runtime", "openvino", "--runs", 3, "--json", records)
    assert r.returncode == 0, r.stdout + r.stderr
    rec = json.loads(records.read_text())[0]
    assert rec["precision"] == "bf16" and rec["runtime_info"]["precision"] == "bf16"


def test_int8_ir_from_the_qdq_artifact_and_ort_cannot_run_it(pair, edgekit, tmp_path):
    out = tmp_path / "ov8"
    r = _build(edgekit, pair.int8, out, "--eval", pair.eval)
    assert r.returncode == 0, r.stdout + r.stderr
    m = read_manifest(out)
    assert m.passes[-1].summary["fake_quantize"] > 0
    assert m.verification["openvino"]["fidelity"]["output_0"]["top1_agreement"] >= 0.8
    # its Q/DQ were placed for ONNX Runtime (compress's default target): the build says how to place
    # them for OpenVINO
    assert "compress --int8 --target openvino" in r.stderr
    records = tmp_path / "r.json"
    r = edgekit("bench", out, "--runtime", "openvino,ort", "--runs", 3, "--json", records)
    assert r.returncode == 0, r.stdout + r.stderr
    ov, ort = json.loads(records.read_text())
    assert ov["ok"] and ov["runtime_info"]["precision"] == "f32"
    assert ort["not_applicable"] and "model.xml" in ort["reason"]


def test_nncf_quantizes_the_fp32_artifact(pair, edgekit, tmp_path):
    out = tmp_path / "nncf"
    calib = Path(pair.eval).parent / "calib.npz"
    r = _build(edgekit, pair.fp32, out, "--quantizer", "nncf", "--calib", calib, "--calib-size", 32)
    assert r.returncode == 0, r.stdout + r.stderr
    m = read_manifest(out)
    assert m.passes[-1].summary["fake_quantize"] > 0 and "nncf" in m.passes[-1].summary["quantizer"]
    assert m.data["build_calibration"]["count"] == 32
    # made for this CPU: NNCF's overflow fix (7-bit weights) exactly where u8 x s8 saturates
    fix = "enable" if CLASSES[m.target_cpu["class"]].saturates else "disable"
    assert m.target_cpu["form"] == f"nncf overflow_fix={fix}" and m.target_cpu["from"] == resolve().source
    v = m.verification["openvino"]
    assert v["data"] == "calibration samples" and v["fidelity"]["output_0"]["sqnr_db"] > 10


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--quantizer", "nncf"], "needs calibration data"),
        (["--precision", "int4"], "not one of"),
    ],
)
def test_bad_build_options_are_one_sentence(pair, edgekit, tmp_path, args, message):
    r = _build(edgekit, pair.fp32, tmp_path / "x", *args)
    assert r.returncode == 2 and r.stderr.startswith("edgekit: error:") and message in r.stderr, r.stderr
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))


def test_nncf_refuses_an_already_quantized_artifact(pair, edgekit, tmp_path):
    calib = Path(pair.eval).parent / "calib.npz"
    r = _build(edgekit, pair.int8, tmp_path / "x", "--quantizer", "nncf", "--calib", calib)
    assert r.returncode == 2 and "already quantized" in r.stderr
    assert not (tmp_path / "x").exists()


def test_build_from_a_non_artifact_and_over_an_existing_output(pair, edgekit, tmp_path):
    r = _build(edgekit, tmp_path, tmp_path / "x")
    assert r.returncode == 2 and "not an edgekit artifact" in r.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("mine")
    r = _build(edgekit, pair.fp32, tmp_path / "taken")
    assert r.returncode == 2 and "already exists" in r.stderr
    assert (tmp_path / "taken" / "f").read_text() == "mine"


def test_a_rank_refusal_names_the_input_shape_that_fixes_the_open_axes():
    """Silero VAD's refusal (tests/test_zoo_models.py builds it): OpenVINO cannot know a rank while
    the audio axis is open, so the sentence names the --input-shape of the data's size; a refusal
    for another reason, or a model without open axes, gets no such hint."""
    from edgekit.artifact import InputSpec, TensorSpec
    from edgekit.export.openvino import open_axes_hint

    spec = InputSpec(
        inputs=[
            TensorSpec(name="input", shape=["batch", "sequence"], example=[1, 576]),
            TensorSpec(name="state", shape=[2, "batch", 128], batch_axis=1),
            TensorSpec(name="sr", shape=[], dtype="int64", batch_axis=None),
        ]
    )
    rank = "OpenVINO's ONNX frontend refuses this node: The input data tensor's rank has to be known (static)"
    hint = open_axes_hint(rank, spec)
    assert "(input: sequence)" in hint and "`edgekit compress MODEL --input-shape input:1,576`" in hint
    assert open_axes_hint("OpenVINO has no conversion for this op", spec) == ""
    fixed = InputSpec(inputs=[TensorSpec(name="input", shape=["batch", 576])])
    assert open_axes_hint(rank, fixed) == ""
