"""TensorRT plan builder: config validation and the pure parts here; the build itself where a GPU and
TensorRT are (markers `tensorrt` and `gpu`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from models import resnet_blocks

from edgekit.artifact import InputSpec, TensorSpec
from edgekit.errors import EdgekitError
from edgekit.export import onnx as onnx_export
from edgekit.export import tensorrt as trtx
from edgekit.runtimes import importable

DYNAMIC = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", 3, 32, 32])])
STATIC = InputSpec(inputs=[TensorSpec(name="x", shape=[4, 3, 32, 32])])


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    module, _ = resnet_blocks()
    out = tmp_path_factory.mktemp("trt")
    return onnx_export.export(module, DYNAMIC, out, onnx_export.ExportConfig(), 1), module


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2G", 2 << 30),
        ("512M", 512 << 20),
        ("64k", 64 << 10),
        ("1.5G", 3 << 29),
        ("1048576", 1 << 20),
        ("2GiB", 2 << 30),
    ],
)
def test_parse_bytes(text, expected):
    assert trtx.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "two gigs", "-1G", "0", "2X", "G"])
def test_parse_bytes_refuses_with_one_sentence(text):
    with pytest.raises(EdgekitError, match=r"is not a size in bytes; write it like 2G, 512M or 1048576\.$"):
        trtx.parse_bytes(text)


def test_config_validates_itself():
    assert trtx.TensorRTConfig(workspace="1G").workspace == 1 << 30
    with pytest.raises(EdgekitError, match="not one of fp32, fp16, int8"):
        trtx.TensorRTConfig(precision="bf16")
    with pytest.raises(EdgekitError, match="at least 1"):
        trtx.TensorRTConfig(min_batch=0)


def test_profile_from_the_input_spec():
    assert trtx.TensorRTConfig().profile(DYNAMIC) == (1, 1, 32)
    assert trtx.TensorRTConfig(opt_batch=8, max_batch=64).profile(DYNAMIC) == (1, 8, 64)
    assert trtx.TensorRTConfig().profile(STATIC) == (4, 4, 4)
    with pytest.raises(EdgekitError, match="batch is fixed at 4"):
        trtx.TensorRTConfig(max_batch=8).profile(STATIC)
    with pytest.raises(EdgekitError, match="min <= opt <= max"):
        trtx.TensorRTConfig(min_batch=16, max_batch=8).profile(DYNAMIC)


def test_int8_refused_on_a_model_without_qdq_before_tensorrt_is_needed(tiny_onnx, tmp_path):
    path, _ = tiny_onnx
    with pytest.raises(EdgekitError, match="build an INT8 artifact first: edgekit compress --int8"):
        trtx.build_plan(path, tmp_path, DYNAMIC, trtx.TensorRTConfig(precision="int8"))
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(importable("tensorrt"), reason="checks the message given without TensorRT")
def test_without_tensorrt_one_sentence(tiny_onnx, tmp_path):
    path, _ = tiny_onnx
    with pytest.raises(
        EdgekitError, match=r"^TensorRT is not installed here; pip install 'edgekit\[tensorrt\]'"
    ) as e:
        trtx.build_plan(path, tmp_path, DYNAMIC, trtx.TensorRTConfig())
    assert e.value.exit_code == 2


def test_layer_precisions_and_fallbacks_from_inspector_json():
    """Layers shaped as the engine inspector prints them with ProfilingVerbosity.DETAILED."""
    layers = [
        {
            "Name": "conv1 + relu1",
            "LayerType": "CaskConvolution",
            "ParameterType": "Convolution",
            "Inputs": [
                {"Name": "x", "Format/Datatype": "Thirty-two wide channel vectorized row major Int8 format."}
            ],
            "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP16 format"}],
        },
        {
            "Name": "fc",
            "LayerType": "CaskGemmConvolution",
            "ParameterType": "Convolution",
            "Inputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [{"Name": "z", "Format/Datatype": "Float"}],
        },
        {
            "Name": "reformat",
            "LayerType": "Reformat",
            "Inputs": [{"Format/Datatype": "Half"}],
            "Outputs": [{"Format/Datatype": "Float"}],
        },
    ]
    got = trtx.layer_precisions(layers)
    assert [layer["precision"] for layer in got] == ["int8", "fp32", "fp16"]
    assert [layer["name"] for layer in trtx.fallback_layers(got, "int8")] == [
        "fc"
    ]  # the reformat is no compute
    assert [layer["name"] for layer in trtx.fallback_layers(got, "fp16")] == ["fc"]
    assert trtx.fallback_layers(got, "fp32") == []


def _gpu_or_skip():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'edgekit[tensorrt]')")
    from edgekit.runtimes import trt

    if reason := trt.unsupported("cuda"):
        pytest.skip(reason)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_fp16_plan_builds_runs_and_reuses_its_timing_cache(tiny_onnx, tmp_path):
    _gpu_or_skip()
    from edgekit.runtimes import trt

    path, module = tiny_onnx
    cache = tmp_path / "timing.cache"
    cfg = trtx.TensorRTConfig(precision="fp16", workspace="1G", max_batch=8, timing_cache=cache)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    summary = trtx.build_plan(path, first, DYNAMIC, cfg)
    assert summary["profile"] == {"min_batch": 1, "opt_batch": 1, "max_batch": 8}
    assert summary["layers_by_precision"].get("fp16", 0) > 0
    assert json.loads((first / "model.plan.json").read_text()) == {
        "tensorrt": summary["tensorrt"],
        "gpu": summary["gpu"],
    }
    assert (first / "build.log").read_text().strip() and cache.stat().st_size > 0
    trtx.build_plan(path, second, DYNAMIC, cfg)  # from the saved timing cache
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    out = trt.load(str(first / "model.plan")).run({"x": x})[0]
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_parser_errors_name_the_node(tmp_path):
    _gpu_or_skip()
    import onnx
    from onnx import TensorProto, helper

    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("Det", ["m"], ["d"], name="det_node")],
        "g",
        [vi("m", TensorProto.FLOAT, [2, 3, 3])],
        [vi("d", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    onnx.save(model, str(tmp_path / "det.onnx"))
    spec = InputSpec(inputs=[TensorSpec(name="m", shape=[2, 3, 3])])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(EdgekitError, match="node det_node"):
        trtx.build_plan(tmp_path / "det.onnx", out, spec, trtx.TensorRTConfig())
