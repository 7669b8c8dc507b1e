"""One contract for every runtime: load an exported fp32 artifact, run it, match the fp32 reference.

The reference is ONNX Runtime on the artifact's fp32 ONNX file. Each runtime gets a tolerance on
max |out - ref| relative to max |ref|, chosen for what it does differently:
- ort 1e-6: the reference runtime itself on the same file; only thread scheduling may differ.
- openvino 1e-4: its own fp32 kernels (fusions, accumulation order), with the precision pinned to
  f32 (left alone, the CPU plugin would run bf16 on this CPU and miss this bound by far).
- eager 1e-3: torch runs the source model; the export was verified against it to 1e-3 (the
  export check's default tolerance), so that is the bound ONNX and torch are known to meet.
- tensorrt 1e-4: its own fp32 kernels on the GPU, from a plan built here with TF32 off (on, the
  GPU would round matmul and conv inputs to 10 mantissa bits).
A runtime that is not installed, or cannot use its device here, is skipped with its own reason.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from models import resnet_blocks, smooth_images

from edgekit.artifact import read_manifest
from edgekit.benchmarks.metrics import sqnr_db
from edgekit.benchmarks.runner import BenchConfig, measure, target
from edgekit.errors import RuntimeFailure
from edgekit.pipeline import CompressRequest, compress
from edgekit.runtimes import ALL, MODULES, eager, ort, ov, trt
from edgekit.runtimes import get as get_runtime

TOLERANCE = {"ort": 1e-6, "openvino": 1e-4, "eager": 1e-3, "tensorrt": 1e-4}
DEVICE = {"tensorrt": "cuda"}  # the device each runtime's contract runs on; cpu where not named
MARKS = {"tensorrt": [pytest.mark.tensorrt, pytest.mark.gpu]}


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


def _runnable(name: str):
    """The runtime's module, or a skip with its own reason: not installed, or no device for it here."""
    rt = get_runtime(name)
    if not rt.available():
        pytest.skip(f"{name} is not installed ({rt.INSTALL})")
    if reason := rt.unsupported(DEVICE.get(name, "cpu")):
        pytest.skip(reason)
    return rt


def _session(directory: Path, name: str, **options):
    """A runtime's session on the artifact, loaded the way the benchmark worker loads it."""
    rt = get_runtime(name)
    model, opts = target(directory, read_manifest(directory), rt, BenchConfig(runtime=name))
    return rt.load(model, DEVICE.get(name, "cpu"), rt.Options(**{**opts, **options}))


def _plan(onnx: Path, plan: Path) -> Path:
    """A TensorRT plan built here from the artifact's ONNX file: fp32 with TF32 off, batch 1 to 8."""
    import tensorrt

    logger = tensorrt.Logger(tensorrt.Logger.WARNING)
    builder = tensorrt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = tensorrt.OnnxParser(network, logger)
    assert parser.parse(onnx.read_bytes()), parser.get_error(0)
    config = builder.create_builder_config()
    config.clear_flag(tensorrt.BuilderFlag.TF32)
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    config.add_optimization_profile(profile)
    plan.write_bytes(builder.build_serialized_network(network, config))
    return plan


def _feeds() -> dict[str, np.ndarray]:
    return {"x": smooth_images(4)}


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(out - ref).max() / np.abs(ref).max())


def test_every_runtime_has_a_contract_and_the_protocol():
    assert set(TOLERANCE) == set(ALL)
    assert MODULES["tensorrt"] == MODULES["trt"] == "trt"
    for name in ALL:
        rt = get_runtime(name)
        for attr in (
            "NAME",
            "INSTALL",
            "SOURCE",
            "FORMATS",
            "PRECISIONS",
            "available",
            "unsupported",
            "load",
        ):
            assert hasattr(rt, attr), f"{name} has no {attr}"
        assert rt.PRECISIONS[0] == "f32"
    assert (eager.FORMATS, ort.FORMATS, ov.FORMATS, trt.FORMATS) == (
        (),
        (".onnx",),
        (".onnx", ".xml"),
        (".plan", ".engine"),
    )


@pytest.mark.parametrize("name", [pytest.param(n, marks=MARKS.get(n, [])) for n in ALL])
def test_runtime_matches_fp32_reference(artifacts, name, tmp_path):
    rt = _runnable(name)
    ref = ort.load(str(artifacts["torch"] / "model.onnx")).run(_feeds())
    if name == "tensorrt":  # its model is a plan, built here for this GPU
        sess = rt.load(str(_plan(artifacts["torch"] / "model.onnx", tmp_path / "model.plan")), "cuda")
    else:
        sess = _session(artifacts["torch"], name)
    out = sess.run(_feeds())
    assert len(out) == len(ref)
    for o, r in zip(out, ref, strict=True):
        assert o.shape == r.shape
        assert _relative_error(o, r) <= TOLERANCE[name]


@pytest.fixture(scope="module")
def wide_conv(tmp_path_factory) -> Path:
    """An fp32 artifact of three 256-channel convolutions whose 64x64 maps are the output: wide
    enough that cuDNN runs TF32 tensor-core kernels when allowed (on an H200 it does not for the
    contract's small network), with nothing pooled to average the rounding away. Built only where
    there is a CUDA device."""
    import torch
    from torch import nn

    if reason := eager.unsupported("cuda"):
        pytest.skip(reason)
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, 3, padding=1),
    ).eval()  # fmt: skip
    root = tmp_path_factory.mktemp("wide")
    torch.export.save(torch.export.export(module, (torch.randn(1, 3, 64, 64),)), root / "model.pt2")
    compress(CompressRequest(model=root / "model.pt2", out=root / "fp32"))
    return root / "fp32"


def _tf32_convs(torch, on: bool) -> None:
    """torch's cuDNN TF32 setting, conv and RNN together (torch refuses to read a mix of them)."""
    mode = "tf32" if on else "ieee"
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = mode


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["f32", "f16"])
def test_eager_on_cuda_runs_the_precision_it_reports(wide_conv, precision):
    """f32 on an NVIDIA GPU meets TensorRT's fp32 bound, where torch's default TF32 convolutions
    (10 mantissa bits) are shown to miss it; f16 is close to the reference but not equal."""
    import torch

    manifest = read_manifest(wide_conv)
    [name] = manifest.input_spec.names
    feeds = {name: np.random.default_rng(0).standard_normal((1, 3, 64, 64), dtype=np.float32)}
    ref = ort.load(str(wide_conv / "model.onnx")).run(feeds)[0]
    model, opts = target(wide_conv, manifest, eager, BenchConfig("eager"))
    sess = eager.load(model, "cuda", eager.Options(**{**opts, "precision": precision}))
    assert (sess.info()["device"], sess.info()["precision"]) == ("cuda", precision)
    error = _relative_error(sess.run(feeds)[0], ref)
    if precision == "f16":
        assert 0 < error < 1e-2
        return
    assert error <= TOLERANCE["tensorrt"]
    _tf32_convs(torch, on=True)  # torch's default, unless told otherwise
    try:
        assert _relative_error(sess.run(feeds)[0], ref) > TOLERANCE["tensorrt"]
    finally:
        _tf32_convs(torch, on=False)


@pytest.mark.gpu
def test_bench_row_on_cuda_has_gpu_memory_and_energy(artifacts):
    """An eager row on an NVIDIA GPU: torch's peak allocation, and NVML's energy where its counter
    is readable (else the reason, not a number)."""
    if reason := eager.unsupported("cuda"):
        pytest.skip(reason)
    # two seconds of runs: NVML's energy counter moves in steps of many milliseconds
    record = measure(artifacts["torch"], BenchConfig(runtime="eager", device="cuda", seconds=2.0))
    assert record["ok"], record
    assert record["latency"]["count"] > 0 and record["latency"]["median_ms"] > 0
    memory = record["gpu_memory"]
    assert memory["available"] and memory["peak_allocated_mb"] > 0, memory
    assert "used_mb" in memory or memory["nvml_reason"], memory
    energy = record["energy"]
    if energy["available"]:
        assert energy["joules"]["nvml_gpu"] > 0 and energy["joules_per_inference"] > 0, energy
    else:
        assert "NVML" in energy["reason"] or "pynvml" in energy["reason"], energy


def test_openvino_precision_is_pinned_and_read_back(artifacts, bf16_reason):
    _runnable("openvino")
    assert _session(artifacts["torch"], "openvino").info()["precision"] == "f32"
    if bf16_reason:  # the f32 pin above holds everywhere; a bf16 session needs bf16 instructions
        pytest.skip(bf16_reason)
    sess = _session(artifacts["torch"], "openvino", precision="bf16")
    assert sess.info()["precision"] == "bf16"
    ref = ort.load(str(artifacts["torch"] / "model.onnx")).run(_feeds())
    assert 0 < _relative_error(sess.run(_feeds())[0], ref[0]) < 0.1  # really bf16: close, not equal


def test_eager_on_onnx_sourced_artifact_is_not_applicable(artifacts):
    record = measure(artifacts["onnx"], BenchConfig(runtime="eager", runs=1, warmup=0))
    assert record["ok"] is False and record["not_applicable"] is True
    assert "ONNX" in record["reason"]


def test_runtimes_command_lists_ort(edgekit):
    assert "CPUExecutionProvider" in ort.describe()["providers"] and "cpu" in ort.describe()["devices"]
    proc = edgekit("runtimes")
    assert proc.returncode == 0, proc.stderr
    rows = {x.split("│")[1].strip(): x for x in proc.stdout.splitlines() if x.count("│") == 5}
    assert "cpu" in rows["ort"]
    missing = [name for name in ALL if not get_runtime(name).available()]
    for name in missing:  # the pip command as written, its extra not eaten as markup
        assert get_runtime(name).INSTALL.split(" (")[0] in rows[name], rows[name]
    if not missing:
        pytest.skip("every runtime is installed here: no pip command to show")


def test_unsupported_devices_give_the_reason_here():
    """Where a build or the device is missing, each runtime says which (on a GPU machine too)."""
    import torch

    assert ort.unsupported("cpu") is None
    if "CUDAExecutionProvider" not in ort.describe()["providers"]:
        assert "no CUDAExecutionProvider" in ort.unsupported("cuda")
        assert "onnxruntime-gpu" in ort.unsupported("cuda")
    assert "no TensorrtExecutionProvider" in ort.unsupported("tensorrt")
    assert "not npu" in ort.unsupported("npu")
    assert eager.unsupported("cpu") is None
    cuda = torch.cuda.is_available()
    assert eager.unsupported("cuda") == (None if cuda else "torch sees no CUDA device here")
    assert eager.unsupported("npu") == "the eager runtime runs on cpu or cuda, not npu"
    assert "not cpu" in trt.unsupported("cpu")
    if not ov.available():
        pytest.skip("openvino is not installed")
    assert ov.unsupported("cpu") is None
    assert ov.unsupported("gpu").startswith("OpenVINO has no GPU device here (it has CPU")


def test_tensorrt_says_why_it_cannot_run_here():
    """No GPU here: TensorRT is either not installed (and says which extra adds it) or has no GPU."""
    if not trt.available():
        assert "edgekit[tensorrt]" in trt.INSTALL
        assert trt.unsupported("cuda") == f"tensorrt is not installed ({trt.INSTALL})"
    else:
        assert "NVIDIA GPU" in trt.unsupported("cuda")
    with pytest.raises(RuntimeFailure, match=r"NVIDIA GPU|not installed"):
        trt.load("model.plan", "cuda")


def test_tensorrt_refuses_a_plan_built_elsewhere(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"")
    trt.check_built_for(str(plan), "10.3.0", "NVIDIA H100 80GB HBM3")  # no sidecar: nothing to check
    (tmp_path / "model.plan.json").write_text(
        json.dumps({"tensorrt": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3"})
    )
    trt.check_built_for(str(plan), "10.3.0", "NVIDIA H100 80GB HBM3")
    with pytest.raises(
        RuntimeFailure, match=re.escape("built with TensorRT 10.3.0 and this machine has TensorRT 10.7.0")
    ):
        trt.check_built_for(str(plan), "10.7.0", "NVIDIA H100 80GB HBM3")
    with pytest.raises(
        RuntimeFailure, match="built for the GPU NVIDIA H100 80GB HBM3 and this machine's GPU is Orin"
    ):
        trt.check_built_for(str(plan), "10.3.0", "Orin")


def test_ort_refuses_a_gpu_it_does_not_have(artifacts, monkeypatch):
    """Asked for CUDA, ORT runs on CPU without a word where the CUDA EP is absent or fails to start;
    edgekit refuses both: up front where the build lacks the EP, after the session where it failed."""
    import onnxruntime

    if "CUDAExecutionProvider" in ort.describe()["providers"]:
        pytest.skip("this onnxruntime build has the CUDA EP")
    model = str(artifacts["torch"] / "model.onnx")
    with pytest.raises(
        RuntimeFailure, match=re.escape("has no CUDAExecutionProvider (pip install onnxruntime-gpu)")
    ):
        ort.load(model, "cuda")
    have = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", *have])
    with (
        pytest.warns(UserWarning, match="CUDAExecutionProvider"),
        pytest.raises(RuntimeFailure, match="could not use CUDAExecutionProvider for device cuda"),
    ):
        ort.load(model, "cuda")


def test_ort_records_the_providers_it_ran_with(artifacts):
    info = ort.load(str(artifacts["torch"] / "model.onnx")).info()
    assert info["providers"] == ["CPUExecutionProvider"] and info["device"] == "cpu"
    assert info["precision"] == "f32"


def test_eager_bf16_runs_in_bf16_close_to_f32(artifacts):
    _runnable("eager")
    f32 = _session(artifacts["torch"], "eager").run(_feeds())[0]
    sess = _session(artifacts["torch"], "eager", precision="bf16")
    out = sess.run(_feeds())[0]
    assert sess.info()["precision"] == "bf16" and sess.info()["precision_requested"] == "bf16"
    assert out.dtype == np.float32 and out.shape == f32.shape
    assert 20 < sqnr_db(f32, out) < 100  # bf16: close to f32, and not equal to it
    with pytest.raises(RuntimeFailure, match="not one of f32, bf16, f16"):
        eager.Options(precision="int8")


def test_bench_one_row_per_runtime(edgekit, artifacts, tmp_path):
    _runnable("openvino")
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


def test_outputs_that_are_no_tensors_come_back_as_arrays():
    """ONNX Runtime gives a sequence of maps (skl2onnx's ZipMap) or of tensors as a list; the
    comparisons and batch joins read arrays."""
    from edgekit.errors import RuntimeFailure
    from edgekit.runtimes.ort import as_array

    maps = [{0: 0.25, 1: 0.75}, {0: 0.5, 1: 0.5}]
    assert np.array_equal(as_array(maps), np.array([[0.25, 0.75], [0.5, 0.5]]))
    assert as_array([np.zeros(3), np.ones(3)]).shape == (2, 3)
    with pytest.raises(RuntimeFailure, match="sequence of 2 tensors of different shapes"):
        as_array([np.zeros(3), np.ones(4)])
