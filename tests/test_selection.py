"""A detector with NonMaxSuppression in its graph (outputs [K, 4] boxes and [K, 3] selected indices,
K found per image) is compressed without the selection, judged on the boxes and scores the
selection reads, and the selection put back: the artifact has the model's outputs, and the
verification compares the selections as sets. (A classifier whose probabilities come out as a
sequence of maps, skl2onnx's ZipMap, is cut the same way: tests/test_sklearn_onnx.py.)"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from edgekit.compress import selection


class _Head(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, 2, 1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 16, 3, 2, 1),
            torch.nn.ReLU(),
        )
        self.box = torch.nn.Conv2d(16, 4, 1)
        self.cls = torch.nn.Conv2d(16, 2, 1)

    def forward(self, x):
        f = self.body(x)
        b = self.box(f).flatten(2).transpose(1, 2)  # [1, N, 4]
        xy, wh = b[..., :2].sigmoid() * 64, b[..., 2:].sigmoid() * 16 + 4
        return torch.cat([xy - wh / 2, xy + wh / 2], -1), self.cls(f).flatten(2).sigmoid()


def _detector(path) -> None:
    """boxes [1, N, 4], scores [1, 2, N] -> NonMaxSuppression -> the selected boxes [K, 4] and the
    selection [K, 3]."""
    torch.manual_seed(0)
    head = path.with_name("head_fp32.onnx")
    torch.onnx.export(
        _Head().eval(), (torch.rand(1, 3, 64, 64),), str(head), input_names=["images"],
        output_names=["boxes", "scores"], dynamo=False, opset_version=17,
    )  # fmt: skip
    model = onnx.load(str(head))
    graph = model.graph
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([10], np.int64), "max_out"),
            numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
            numpy_helper.from_array(np.array([0.55], np.float32), "threshold"),
            numpy_helper.from_array(np.array([2], np.int64), "box_column"),
            numpy_helper.from_array(np.array([0], np.int64), "first"),
            numpy_helper.from_array(np.array([1], np.int64), "second"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node(
                "NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "threshold"], ["selected"]
            ),
            helper.make_node("Gather", ["selected", "box_column"], ["column"], axis=1),
            helper.make_node("Squeeze", ["column", "second"], ["index"]),
            helper.make_node("Squeeze", ["boxes", "first"], ["all_boxes"]),
            helper.make_node("Gather", ["all_boxes", "index"], ["detections"], axis=0),
        ]
    )
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 4]),
            helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3]),
        ]
    )
    onnx.save(model, str(path))


def _images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, 3, 64, 64)).astype(np.float32)


def test_split_judges_what_the_selection_reads_and_rejoin_restores_the_model(tmp_path):
    _detector(tmp_path / "det.onnx")
    split = selection.split(tmp_path / "det.onnx", tmp_path / "head.onnx")
    assert split.ops == ["NonMaxSuppression"] and split.outputs == ["detections", "selected"]
    assert split.cut[:2] == ["boxes", "scores"]
    head = ort.InferenceSession(str(tmp_path / "head.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in head.get_outputs()][:2] == ["boxes", "scores"]
    selection.rejoin(tmp_path / "det.onnx", tmp_path / "head.onnx", tmp_path / "back.onnx", split)
    full, back = (
        ort.InferenceSession(str(tmp_path / p), providers=["CPUExecutionProvider"])
        for p in ("det.onnx", "back.onnx")
    )
    for x in _images(4, 1):
        a, b = full.run(None, {"images": x[None]}), back.run(None, {"images": x[None]})
        assert [o.shape for o in a] == [o.shape for o in b] and all(
            np.array_equal(p, q) for p, q in zip(a, b, strict=True)
        )
    assert selection.split(tmp_path / "head_fp32.onnx", tmp_path / "none.onnx") is None  # fixed-size outputs


def test_compare_counts_and_overlaps_the_selections():
    ref = [np.array([[0, 1, 5], [0, 0, 2]]), np.zeros((0, 3), np.int64)]
    out = [np.array([[0, 1, 5], [0, 1, 7]]), np.zeros((0, 3), np.int64)]
    assert selection.compare(ref, out) == {
        "same_count": 1.0,
        "rows_iou": (1 / 3 + 1) / 2,
        "rows_iou_selected": 1 / 3,
        "selected_samples": 1,
    }


def test_int8_of_a_detector_with_nms_in_the_graph(edgekit, tmp_path):
    _detector(tmp_path / "det.onnx")
    np.savez(tmp_path / "calib.npz", images=_images(24, 2))
    np.savez(tmp_path / "eval.npz", images=_images(16, 3))
    r = edgekit(
        "compress", tmp_path / "det.onnx", "--int8", "--calib", tmp_path / "calib.npz", "--eval",
        tmp_path / "eval.npz", "-o", tmp_path / "out", "--min-fidelity", "scores=5",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr  # a floor may name what the selection reads
    manifest = json.loads((tmp_path / "out" / "edgekit.json").read_text())
    judged = manifest["verification"]["int8"]["fidelity"]
    assert [judged["output_0"]["name"], judged["output_1"]["name"]] == ["boxes", "scores"]
    assert judged["output_0"]["sqnr_db"] > 20
    chosen = manifest["verification"]["selection"]
    assert chosen["ops"] == ["NonMaxSuppression"] and chosen["samples"] == 16
    assert chosen["outputs"]["selected"]["rows_iou"] > 0.5
    int8 = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in int8.get_outputs()] == ["detections", "selected"]
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
