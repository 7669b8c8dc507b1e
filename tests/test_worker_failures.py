"""A worker that fails (a corrupt model file) or hangs (past --timeout) becomes a failed row with its
reason, and the other rows of the same `edgekit bench` run are measured as usual. Real ONNX models
built with onnx.helper, imported with edgekit.pipeline.compress, benchmarked through the real CLI.

A worker killed by a signal is not tested: no model found here makes onnxruntime or OpenVINO abort
honestly (a corrupt file is refused with an exception, which is the case above)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifact import read_manifest, write_manifest
from edgekit.pipeline import CompressRequest, compress


def _matmul_artifact(root: Path, name: str, n: int, batch: int) -> Path:
    """An artifact of y = x · W (n × n float32 W, fixed batch), imported from an ONNX file built here."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((n, n), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / f"{name}.onnx")
    compress(CompressRequest(model=root / f"{name}.onnx", out=root / name))
    return root / name


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("worker-failures")
    good = _matmul_artifact(root, "good", 64, 1)
    # ~17 GFLOP a run (tens of ms on two cores): a large fixed --runs keeps it busy for minutes
    slow = _matmul_artifact(root, "slow", 2048, 2048)
    # A corrupt model file whose manifest still matches it, so the worker itself meets the damage
    # (the runner's hash check, which would refuse it earlier, is a separate feature).
    corrupt = root / "corrupt"
    shutil.copytree(good, corrupt)
    model = corrupt / read_manifest(corrupt).model_file
    model.write_bytes(b"this is not an ONNX model \x00\xff" * 64)
    write_manifest(corrupt, read_manifest(corrupt))
    return {"good": good, "slow": slow, "corrupt": corrupt}


def _bench(edgekit, tmp_path: Path, *args) -> tuple[object, list[dict]]:
    out = tmp_path / "records.json"
    proc = edgekit("bench", *args, "--json", out, timeout=240)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def _measured(record: dict) -> bool:
    return record.get("ok") is True and record["latency"]["median_ms"] > 0


def test_a_corrupt_model_is_a_failed_row_with_its_reason_and_the_others_complete(
    edgekit, artifacts, tmp_path
):
    good, bad = artifacts["good"], artifacts["corrupt"]
    proc, records = _bench(edgekit, tmp_path, good, bad, good, "--runs", "20", "--warmup", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert [Path(r["artifact"]).name for r in records] == ["good", "corrupt", "good"]
    assert _measured(records[0]) and _measured(records[2]), records
    failed = records[1]
    assert failed["ok"] is False and "latency" not in failed
    assert "protobuf" in failed["error"].lower(), failed["error"]  # onnxruntime's own reason
    assert "failed: " in proc.stdout and "protobuf" in proc.stdout.lower(), proc.stdout


def test_a_worker_past_its_timeout_is_a_failed_row_and_the_others_complete(edgekit, artifacts, tmp_path):
    good, slow = artifacts["good"], artifacts["slow"]
    # 20 000 runs: well under a second for the 64 × 64 model, many minutes for the 2048² one
    args = (good, slow, good, "--runs", "20000", "--warmup", "1", "--timeout", "10")
    proc, records = _bench(edgekit, tmp_path, *args)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert [Path(r["artifact"]).name for r in records] == ["good", "slow", "good"]
    assert _measured(records[0]) and _measured(records[2]), records
    assert records[0]["latency"]["count"] == 20000
    assert records[1]["ok"] is False and records[1]["error"] == "timed out after 10 s"
    assert "timed out after 10 s" in proc.stdout, proc.stdout
