"""One contract for every runtime: load an exported fp32 artifact, run it, match the fp32 reference.

The reference is ONNX Runtime on the artifact's fp32 ONNX file. Each runtime gets a tolerance on
max |out - ref| relative to max |ref|, chosen for what it does differently:
- ort 1e-6: the reference runtime itself on the same file; only thread scheduling may differ.
- openvino 1e-4: its own fp32 kernels (fusions, accumulation order), with the precision pinned to
  f32 (left alone, the CPU plugin would run bf16 on this CPU and miss this bound by far).
- eager 1e-3: torch runs the source model; the export was verified against it to 1e-3 (the
  export check's default tolerance), so that is the bound ONNX and torch are known to meet.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from models import resnet_blocks, smooth_images

from edgekit.artifact import read_manifest
from edgekit.benchmarks.runner import BenchConfig, measure, target
from edgekit.benchmarks.runner import runtime as get_runtime
from edgekit.pipeline import CompressRequest, compress
from edgekit.runtimes import ort

TOLERANCE = {"ort": 1e-6, "openvino": 1e-4, "eager": 1e-3}
LIBRARY = {"ort": "onnxruntime", "openvino": "openvino", "eager": "torch"}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """An fp32 artifact exported from a torch.export program, and one imported from its ONNX file
    (whose source is ONNX, so eager has no torch model to run)."""
    import torch

    root = tmp_path_factory.mktemp("runtimes")
    module, _ = resnet_blocks()
    batch = torch.export.Dim("batch", min=1, max=64)
    ep = torch.export.export(module, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, root / "model.pt2")
    compress(CompressRequest(model=root / "model.pt2", out=root / "fp32"))
    compress(CompressRequest(model=root / "fp32" / "model.onnx", out=root / "from-onnx"))
    return {"torch": root / "fp32", "onnx": root / "from-onnx"}


def _session(directory: Path, name: str, **options):
    """A runtime's session on the artifact, loaded the way the benchmark worker loads it."""
    rt = get_runtime(name)
    model, opts = target(directory, read_manifest(directory), rt)
    return rt.load(model, "cpu", rt.Options(**opts, **options))


def _feeds() -> dict[str, np.ndarray]:
    return {"x": smooth_images(4)}


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", sorted(TOLERANCE))
def test_runtime_matches_fp32_reference(artifacts, name):
    pytest.importorskip(LIBRARY[name], reason=f"{LIBRARY[name]} is not installed")
    ref = ort.load(str(artifacts["torch"] / "model.onnx")).run(_feeds())
    out = _session(artifacts["torch"], name).run(_feeds())
    assert len(out) == len(ref)
    for o, r in zip(out, ref, strict=True):
        assert o.shape == r.shape
        assert _relative_error(o, r) <= TOLERANCE[name]


def _cpu_has_bf16() -> bool:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def test_openvino_precision_is_pinned_and_read_back(artifacts):
    pytest.importorskip("openvino", reason="openvino is not installed")
    assert _session(artifacts["torch"], "openvino").info()["precision"] == "f32"
    if not _cpu_has_bf16():
        pytest.skip("this CPU has no AVX-512 BF16 or AMX: OpenVINO would not run bf16 here")
    sess = _session(artifacts["torch"], "openvino", precision="bf16")
    assert sess.info()["precision"] == "bf16"
    ref = ort.load(str(artifacts["torch"] / "model.onnx")).run(_feeds())
    assert 0 < _relative_error(sess.run(_feeds())[0], ref[0]) < 0.1  # really bf16: close, not equal


def test_eager_on_onnx_sourced_artifact_is_not_applicable(artifacts):
    record = measure(artifacts["onnx"], BenchConfig(runtime="eager", runs=1, warmup=0))
    assert record["ok"] is False and record["not_applicable"] is True
    assert "ONNX" in record["reason"]


def test_runtimes_command_lists_ort(edgekit):
    proc = edgekit("runtimes")
    assert proc.returncode == 0, proc.stderr
    assert "ort" in proc.stdout and "CPUExecutionProvider" in proc.stdout


def test_bench_one_row_per_runtime(edgekit, artifacts, tmp_path):
    pytest.importorskip("openvino", reason="openvino is not installed")
    out = tmp_path / "rows.json"
    proc = edgekit("bench", artifacts["torch"], "--runtime", "ort,openvino", "--runs", 10, "--json", out)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())
    assert [r["runtime"] for r in records] == ["ort", "openvino"]
    assert all(r["ok"] and r["latency"]["count"] == 10 for r in records)
    assert records[1]["runtime_info"]["precision"] == "f32"


def test_bench_eager_on_onnx_source_is_a_row_not_a_failure(edgekit, artifacts):
    proc = edgekit("bench", artifacts["onnx"], "--runtime", "eager", "--runs", 1)
    assert proc.returncode == 0, proc.stderr
    assert "not applicable" in proc.stdout
