"""A model exported in fp16 (ORT's float16 converter, a half-precision export) is quantized from
fp32: its weights widened exactly, its fp16 inputs and outputs kept. Quantized from its fp16
tensors, real MobileNetV2 kept 73 % top-1 agreement (89 % widened, 91 % from its fp32 file). Such
files may also list nodes out of order (the converter's keep_io_types Casts come last): ONNX
Runtime runs them, so edgekit sorts them rather than refuse the file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from models import resnet_blocks, smooth_images
from onnx import TensorProto, numpy_helper

from edgekit.compress import widen
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples
from edgekit.export import check
from edgekit.export.onnx import _in_order, topologically_sorted


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """resnet_blocks as fp32 ONNX, and as ORT's float16 converter writes it: fp16 throughout, and
    fp16 inside fp32 inputs and outputs (keep_io_types)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    root = tmp_path_factory.mktemp("widen")
    module, _ = resnet_blocks()
    torch.onnx.export(
        module, (torch.randn(1, 3, 32, 32),), str(root / "fp32.onnx"), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "N"}, "y": {0: "N"}}, dynamo=False, opset_version=13,
    )  # fmt: skip
    fp32 = onnx.load(str(root / "fp32.onnx"))
    onnx.save(convert_float_to_float16(fp32), str(root / "fp16.onnx"))
    onnx.save(convert_float_to_float16(fp32, keep_io_types=True), str(root / "fp16_io32.onnx"))
    return {k: root / f"{k}.onnx" for k in ("fp32", "fp16", "fp16_io32")}


def _run(path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _sqnr(ref: np.ndarray, out: np.ndarray) -> float:
    ref, out = ref.astype(np.float64), out.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((out - ref) ** 2)))


def test_widening_is_exact_and_keeps_the_fp16_interface(models, tmp_path):
    assert widen.widened(models["fp32"], tmp_path / "none.onnx") == 0
    assert not (tmp_path / "none.onnx").exists()
    assert widen.widened(models["fp16"], tmp_path / "w.onnx") > 0
    w = onnx.load(str(tmp_path / "w.onnx"))
    assert [v.type.tensor_type.elem_type for v in (*w.graph.input, *w.graph.output)] == [
        TensorProto.FLOAT16
    ] * 2
    assert all(t.data_type != TensorProto.FLOAT16 for t in w.graph.initializer)
    # the same function as the fp32 model with its weights rounded to fp16, computed in fp32
    rounded = onnx.load(str(models["fp32"]))
    for t in rounded.graph.initializer:
        if t.data_type == TensorProto.FLOAT:
            half = numpy_helper.to_array(t).astype(np.float16).astype(np.float32)
            t.CopyFrom(numpy_helper.from_array(half, t.name))
    onnx.save(rounded, str(tmp_path / "rounded.onnx"))
    x = smooth_images(8).astype(np.float16)
    out = _run(tmp_path / "w.onnx", x)
    assert out.dtype == np.float16
    np.testing.assert_array_equal(
        out, _run(tmp_path / "rounded.onnx", x.astype(np.float32)).astype(np.float16)
    )


def test_an_fp16_model_quantizes_as_well_as_its_fp32_file(models, tmp_path, monkeypatch):
    calib, held = smooth_images(64, seed=0), smooth_images(64, seed=1)
    cfg = Int8Config(adaround=False, range_search=False)
    quantize_int8(models["fp32"], tmp_path / "q32.onnx", Samples({"x": calib}, None), cfg, None)
    from_fp32 = _sqnr(_run(models["fp32"], held), _run(tmp_path / "q32.onnx", held))

    half = Samples({"x": calib.astype(np.float16)}, None)
    summary = quantize_int8(models["fp16"], tmp_path / "q16.onnx", half, cfg, None)
    assert summary["widened_from_fp16"] > 0
    ref = _run(models["fp16"], held.astype(np.float16))
    out = _run(tmp_path / "q16.onnx", held.astype(np.float16))
    assert out.dtype == np.float16
    widened = _sqnr(ref, out)
    monkeypatch.setattr(widen, "widened", lambda src, dst: 0)
    quantize_int8(models["fp16"], tmp_path / "raw.onnx", half, cfg, None)
    raw = _sqnr(ref, _run(tmp_path / "raw.onnx", held.astype(np.float16)))
    assert widened > from_fp32 - 1.5 and widened > raw + 2, (widened, from_fp32, raw)


def test_nodes_out_of_order_are_sorted_not_refused(models, tmp_path):
    graph = onnx.load(str(models["fp16_io32"])).graph
    assert not _in_order(graph)  # the converter's input Casts come after their readers
    sorted_model = topologically_sorted(onnx.load(str(models["fp16_io32"])))
    assert _in_order(sorted_model.graph)
    onnx.checker.check_model(sorted_model)
    assert [n.name for n in sorted(sorted_model.graph.node, key=lambda n: n.name)] == sorted(
        n.name for n in graph.node
    )
    assert check.check(models["fp16_io32"], "ort") == []  # ORT runs it: no finding
    x = smooth_images(4)
    onnx.save(sorted_model, str(tmp_path / "sorted.onnx"))
    np.testing.assert_array_equal(_run(tmp_path / "sorted.onnx", x), _run(models["fp16_io32"], x))
