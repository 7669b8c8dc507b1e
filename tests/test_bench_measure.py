"""What a bench record holds besides latency: memory over the runtime's baseline (a model with 100 MB
of weights must show it), energy or the reason there is none, the host fingerprint, and one row
per batch size. Real ONNX models built with onnx.helper, imported with edgekit.pipeline.compress."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.benchmarks import energy
from edgekit.benchmarks.runner import CPU_FLAGS, BenchConfig, measure
from edgekit.pipeline import CompressRequest, compress

WEIGHTS_N = 5000  # a 5000 × 5000 float32 weight: 100 MB (95.4 MiB)


def _matmul_artifact(root: Path, n: int, batch: str | int) -> Path:
    """An artifact of y = x · W with an n × n float32 W, imported from an ONNX file built here."""
    root.mkdir(exist_ok=True)
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # onnx's newest IR may be newer than the installed onnxruntime reads
    onnx.save(model, root / "matmul.onnx")
    compress(CompressRequest(model=root / "matmul.onnx", out=root / "artifact"))
    return root / "artifact"


@pytest.fixture(scope="module")
def big_record(tmp_path_factory) -> dict:
    """One real ORT bench record of the 100 MB model (a few runs: only memory is asserted on)."""
    directory = _matmul_artifact(tmp_path_factory.mktemp("big"), WEIGHTS_N, "batch")
    return measure(directory, BenchConfig(runtime="ort", runs=3, warmup=1))


def test_memory_shows_100mb_of_weights_over_the_runtime_baseline(big_record):
    assert big_record["ok"], big_record.get("error")
    m = big_record["memory_mb"]
    assert m["model_file_mb"] == pytest.approx(WEIGHTS_N**2 * 4 / 2**20, rel=0.01)
    assert m["baseline_rss"] > 0  # python + numpy + onnxruntime, before the model
    assert m["load_delta"] == pytest.approx(m["load_peak"] - m["baseline_rss"])
    assert m["load_delta"] >= 80  # the weights, resident after load
    assert m["inference_delta"] == pytest.approx(m["peak_rss"] - m["load_peak"])
    assert big_record["gpu_memory"] == {"available": False, "reason": "the run is on cpu"}


def test_record_carries_the_host_fingerprint(big_record):
    host = big_record["host"]
    for key in ("cpu", "cpu_flags", "cores", "gpu", "os", "python", "libraries", "edgekit"):
        assert key in host, key
    assert set(host["cpu_flags"]) <= set(CPU_FLAGS)
    assert "onnxruntime" in host["libraries"] and "numpy" in host["libraries"]
    assert host["threads_used"] == big_record["runtime_info"]["threads"]
    assert "available" in host["gpu"]
    assert big_record["model_sha256"]


def test_energy_is_a_number_or_says_why_not(big_record):
    e = big_record["energy"]
    if e["available"]:
        assert e["joules_per_inference"] > 0
    else:
        assert e["reason"]
    if not Path("/sys/class/powercap").exists():
        assert "no RAPL domains" in e["reason"]


def _write_domain(root: Path, name: str, uj: int, max_uj: int) -> None:
    (root / name).mkdir(exist_ok=True)
    (root / name / "energy_uj").write_text(f"{uj}\n")
    (root / name / "max_energy_range_uj").write_text(f"{max_uj}\n")


def test_rapl_reads_packages_and_unwraps_a_wrapped_counter(tmp_path):
    """A fake powercap tree: two packages (one wraps during the run) and a sub-domain of package 0,
    which is part of the package and must not be added again."""
    _write_domain(tmp_path, "intel-rapl:0", 5_000_000, 10_000_000)
    _write_domain(tmp_path, "intel-rapl:0:0", 1_000_000, 10_000_000)
    _write_domain(tmp_path, "intel-rapl:1", 9_500_000, 10_000_000)
    meter = energy.Meter("cpu", root=tmp_path)
    meter.start()
    _write_domain(tmp_path, "intel-rapl:0", 7_000_000, 10_000_000)  # +2 J
    _write_domain(tmp_path, "intel-rapl:0:0", 9_000_000, 10_000_000)  # ignored
    _write_domain(tmp_path, "intel-rapl:1", 500_000, 10_000_000)  # wrapped: +1 J
    e = meter.stop(runs=10, batch=4)
    assert e["available"] is True
    assert e["joules"] == {"rapl_package": pytest.approx(3.0)}
    assert e["joules_per_inference"] == pytest.approx(0.3)
    assert e["joules_per_sample"] == pytest.approx(0.075)


def test_energy_without_counters_gives_the_reason(tmp_path):
    meter = energy.Meter("cpu", root=tmp_path / "no-powercap")
    meter.start()
    e = meter.stop(runs=10, batch=1)
    assert e["available"] is False and "joules_per_inference" not in e
    assert (
        e["reason"]
        == f"no RAPL domains under {tmp_path / 'no-powercap'}; the run is on cpu, not an NVIDIA GPU; "
        "no tegrastats (not a Jetson)"
    )


def test_unreadable_rapl_counter_gives_the_reason(tmp_path):
    (tmp_path / "intel-rapl:0").mkdir()  # a domain without a readable energy_uj
    assert "not readable" in energy.read_rapl(tmp_path)


def test_batch_sweep_one_row_per_batch_and_static_batch_noted(edgekit, tmp_path):
    dynamic = _matmul_artifact(tmp_path / "dynamic", 16, "batch")
    static = _matmul_artifact(tmp_path / "static", 16, 2)
    out = tmp_path / "rows.json"
    proc = edgekit("bench", dynamic, static, "--batch", "1,8", "--runs", 3, "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert [r["batch"] for r in json.loads(out.read_text())] == [1, 8, 2]
    assert "fixed batch of 2" in proc.stdout
    bad = edgekit("bench", dynamic, "--batch", "1,x")
    assert bad.returncode == 2 and "--batch '1,x'" in bad.stderr
