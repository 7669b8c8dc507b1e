"""Accuracy rows without labels: fidelity of every row to the fp32 reference (top-1 agreement, SQNR,
cosine, max abs diff), and rows at a precision the runtime lowers to (OpenVINO bf16), which must
show the loss that a silent bf16 would hide."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from artifacts import tiny_pair


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    pair = tiny_pair(root)
    with np.load(pair.eval) as z:
        np.savez(root / "unlabelled.npz", x=z["x"])
    return pair, root / "unlabelled.npz"


def _bench(edgekit, tmp_path, *args):
    out = tmp_path / "records.json"
    r = edgekit("bench", *args, "--runs", 3, "--warmup", 1, "--json", out)
    assert "Traceback" not in r.stderr, r.stderr
    return r, (json.loads(out.read_text()) if out.exists() else None)


def test_without_labels_every_row_is_measured_against_the_fp32_artifact(pair, edgekit, tmp_path):
    (p, unlabelled) = pair
    r, records = _bench(edgekit, tmp_path, p.fp32, p.int8, "--eval", unlabelled)
    assert r.returncode == 0, r.stdout + r.stderr
    fp32, int8 = (rec["accuracy"] for rec in records)
    for acc in (fp32, int8):
        assert acc["metric"] == "fidelity vs fp32" and acc["samples"] == 48
        assert acc["reference"] == str(p.fp32) and "top1" not in acc
    # The reference against itself on the same runtime: identical outputs.
    assert fp32["fidelity"]["output_0"]["top1_agreement"] == 1.0
    assert math.isinf(fp32["fidelity"]["output_0"]["sqnr_db"])
    # INT8 against fp32: close, but not identical, and said so with numbers.
    q = int8["fidelity"]["output_0"]
    assert 15 < q["sqnr_db"] < 80 and 0.5 <= q["top1_agreement"] <= 1.0 and 0.9 < q["cosine"] < 1.0
    assert q["max_abs_diff"] > 0
    assert "SQNR" in r.stdout and "fidelity vs fp32" in r.stdout


def test_with_labels_rows_have_accuracy_and_fidelity(pair, edgekit, tmp_path):
    (p, _) = pair
    r, records = _bench(edgekit, tmp_path, p.int8, "--eval", p.eval, "--reference", p.fp32)
    assert r.returncode == 0, r.stdout + r.stderr
    acc = records[0]["accuracy"]
    assert acc["metric"] == "top1" and 0.5 <= acc["top1"] <= 1.0
    assert acc["reference"] == str(p.fp32) and "sqnr_db" in acc["fidelity"]["output_0"]


def test_an_artifact_alone_without_labels_says_there_is_no_reference(pair, edgekit, tmp_path):
    (p, unlabelled) = pair
    r, records = _bench(edgekit, tmp_path, p.int8, "--eval", unlabelled)
    assert r.returncode == 0, r.stdout + r.stderr
    assert records[0]["accuracy"]["metric"] == "none (no labels, no fp32 reference)"
    assert "no fp32 reference" in r.stdout


@pytest.mark.usefixtures("needs_bf16")  # OpenVINO runs a bf16 request in f32 without it
def test_openvino_bf16_row_runs_bf16_and_shows_its_loss(pair, edgekit, tmp_path):
    (p, unlabelled) = pair
    args = ("--runtime", "ort,openvino", "--precision", "f32,bf16", "--eval", unlabelled)
    r, records = _bench(edgekit, tmp_path, p.fp32, *args)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {(rec["runtime"], rec["precision"]): rec for rec in records}
    assert set(rows) == {("ort", "f32"), ("ort", "bf16"), ("openvino", "f32"), ("openvino", "bf16")}
    # ORT cannot be asked to lower the precision: a row saying so, not a silent f32 run.
    assert rows["ort", "bf16"]["not_applicable"] and "own precision" in rows["ort", "bf16"]["reason"]
    ov32, ov16 = rows["openvino", "f32"], rows["openvino", "bf16"]
    assert ov32["runtime_info"]["precision"] == "f32" and ov16["runtime_info"]["precision"] == "bf16"
    sqnr32 = ov32["accuracy"]["fidelity"]["output_0"]["sqnr_db"]
    sqnr16 = ov16["accuracy"]["fidelity"]["output_0"]["sqnr_db"]
    assert sqnr32 > 60 and sqnr16 < 50 and sqnr16 < sqnr32 - 15  # bf16 keeps 8 bits of mantissa
    assert "openvino bf16" in r.stdout


def test_report_carries_fidelity_columns(pair, edgekit, tmp_path):
    (p, unlabelled) = pair
    r = edgekit("bench", p.fp32, p.int8, "--runs", 3, "--eval", unlabelled, "-o", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    r = edgekit("report", tmp_path, "--format", "csv,md", "--plot")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = list(csv.DictReader((tmp_path / "report.csv").open()))
    assert [row["reference"] for row in rows] == [str(p.fp32)] * 2
    assert rows[0]["sqnr_db"] == "inf" and 15 < float(rows[1]["sqnr_db"]) < 80
    assert "agree" in (tmp_path / "report.md").read_text()
    # Without labels the scatter plots agreement with fp32: both rows placed, none left out.
    assert "Left out" not in r.stdout and (tmp_path / "latency_accuracy.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--reference", "{fp32}"], "--reference needs --eval"),
        (["--reference", "{int8}", "--eval", "{eval}"], "not an fp32 artifact"),
        (["--precision", ""], "--precision needs at least one value"),
    ],
)
def test_bad_reference_and_precision_are_one_sentence(pair, edgekit, extra, message):
    (p, _) = pair
    args = [a.format(fp32=p.fp32, int8=p.int8, eval=p.eval) for a in extra]
    r = edgekit("bench", p.int8, "--runs", 1, *args)
    assert r.returncode == 2 and r.stderr.startswith("edgekit: error:") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
