"""The user's task metric (--metric module:function, data.metric) and gates that read the metric
that fits the model: the metric runs on the parent and on the compressed model, its numbers land in
the manifest and in bench rows, and `max_accuracy_drop` / `min_metric` gates read it; without labels
or a metric, a gate reads the main fidelity number of the output's kind, not top-1 of an embedding."""

from __future__ import annotations

import json

import pytest
from hostile import assert_refused, hashes_of

from edgekit.benchmarks.gate import evaluate
from edgekit.config import Gate

METRIC = """
import numpy as np

def accuracy(outputs, labels):
    return {"acc": float(np.mean(outputs[0].argmax(1) == labels)), "n": len(labels)}

def broken(outputs, labels):
    raise RuntimeError("the metric fell over")

def words(outputs, labels):
    return "high"

def peak(outputs, labels):
    return float(outputs[0].max(1).mean())
"""


@pytest.fixture
def metric_dir(work):
    (work / "taskmetric.py").write_text(METRIC)
    return work


@pytest.mark.slow  # two compress runs with evaluation: 30 s
def test_compress_records_the_task_metric_on_parent_and_child(edgekit, digits, metric_dir):
    out = metric_dir / "art"
    data = ("--calib", digits.calib, "--eval", digits.test)
    r = edgekit(
        "compress",
        digits.model,
        "--int8",
        *data,
        "--metric",
        "taskmetric:accuracy",
        "-o",
        out,
        cwd=metric_dir,
    )
    assert r.returncode == 0, r.stderr
    task = json.loads((out / "edgekit.json").read_text())["verification"]["int8"]["task"]
    assert task["metric"] == "taskmetric:accuracy" and task["name"] == "acc"
    assert task["parent"] == pytest.approx(digits.top1, abs=1e-6)  # the fp32 model's own accuracy
    assert task["drop"] == pytest.approx(task["parent"] - task["value"])
    assert task["values"]["n"] == task["parent_values"]["n"] > 0


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("taskmetric:missing", "has no 'missing'"),
        ("nosuchmodule:f", "cannot import"),
        ("taskmetric:broken", "the metric fell over"),
        ("taskmetric:words", "finite number"),
        ("taskmetric", "module:function"),
    ],
)
def test_a_bad_metric_is_one_sentence(edgekit, tiny, metric_dir, spec, said):
    model = tiny / "model.ts.pt"
    before = hashes_of(model)
    out = metric_dir / "art"
    data = ("--calib", "random", "--calib-size", "8", "--eval", "random", "--eval-size", "8")
    args = ("--input-shape", "1,1,16,16", "--int8", *data, "--metric", spec)
    args = (*args, "-o", out)
    r = edgekit("compress", model, *args, cwd=metric_dir)
    assert said in assert_refused(r, out, [model], before)


def test_bench_rows_carry_the_task_metric(edgekit, tiny_artifact, metric_dir):
    out = metric_dir / "rows.json"
    args = ("--eval", "random", "--metric", "taskmetric:peak", "--runs", "3", "--json", out)
    r = edgekit("bench", tiny_artifact, *args, cwd=metric_dir)
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(out.read_text())
    assert row["accuracy"]["task"]["name"] == "peak" and isinstance(row["accuracy"]["task"]["value"], float)


def test_the_yaml_data_metric_and_output_kinds_reach_compress(tmp_path):
    from edgekit.config import load
    from edgekit.run import _compress_request

    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "edgekit.yaml").write_text(
        "model: {path: model.onnx}\n"
        "data: {calibration: random, metric: taskmetric:peak, output_kinds: {emb: embedding}}\n"
        "variants: {int8: [int8]}\n"
        "targets: [{name: cpu, variants: [int8]}]\n"
    )
    cfg = load(tmp_path / "edgekit.yaml")
    req = _compress_request(cfg, tmp_path / "model.onnx", cfg.chain("int8"))
    assert (req.metric, req.output_kinds) == ("taskmetric:peak", {"emb": "embedding"})


def _record(variant: str, accuracy: dict) -> dict:
    return {"target": "cpu", "variant": variant, "ok": True, "runtime": "ort", "accuracy": accuracy}


def _fid(kind: str, **numbers) -> dict:
    return {"fidelity": {"output_0": {"kind": kind, **numbers}}}


def test_gates_read_the_task_metric_first():
    records = [
        _record("fp32", {"top1": 0.9, "task": {"name": "map", "value": 0.50}}),
        _record("int8", {"top1": 0.9, "task": {"name": "map", "value": 0.47}}),
    ]
    gates = [
        Gate(target="cpu", variant="int8", baseline="fp32", max_accuracy_drop=0.02),
        Gate(target="cpu", variant="int8", min_metric=0.45),
    ]
    drop, floor = evaluate(gates, records)
    assert drop.measured == pytest.approx(0.03) and drop.status == "fail" and "map" in drop.detail
    assert floor.measured == pytest.approx(0.47) and floor.status == "pass"


def test_without_labels_an_embedding_gate_reads_cosine_not_top1():
    records = [
        _record("fp32", _fid("embedding", cosine_mean=1.0, sqnr_db=float("inf"))),
        _record("int8", _fid("embedding", cosine_mean=0.985, sqnr_db=17.0)),
    ]
    (result,) = evaluate(
        [Gate(target="cpu", variant="int8", baseline="fp32", max_accuracy_drop=1.0)], records
    )
    assert result.measured == pytest.approx(1.5) and result.status == "fail"
    assert "mean cosine" in result.detail


def test_a_min_metric_gate_without_a_metric_fails_saying_why():
    (result,) = evaluate(
        [Gate(target="cpu", variant="int8", min_metric=0.5)], [_record("int8", {"top1": 0.9})]
    )
    assert result.status == "fail" and result.measured is None and "data.metric" in result.detail
