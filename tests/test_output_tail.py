"""The ops after a model's last layer stay float, and a decoded detection is judged as one. YOLOv8's
head joins box coordinates in pixels with class probabilities in one Concat: one INT8 scale over
both left the probabilities one or two levels, and the output, [N, 4 + classes, anchors], was
judged as a sequence of class scores (position agreement 5 %, exit 1)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from edgekit.compress import output_kinds, output_tail
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


class TinyDetector(nn.Module):
    """A backbone, then YOLOv8's decoded output: boxes (x, y, w, h in pixels of a 64x64 input) and
    sigmoid class scores, concatenated over 64 anchors."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 3, 4, 1), nn.ReLU()
        )
        self.box, self.cls = nn.Conv2d(16, 4, 1), nn.Conv2d(16, 3, 1)
        self.register_buffer(
            "grid", torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"))
        )

    def forward(self, x):
        f = self.backbone(x)
        box = self.box(f)
        xy = (box[:, :2].sigmoid() + self.grid) * 8
        wh = box[:, 2:].exp() * 8
        return torch.cat([xy, wh, self.cls(f).sigmoid()], 1).flatten(2)  # [N, 7, 64]


def _images(n: int, seed: int) -> np.ndarray:
    from models import smooth_images

    return smooth_images(n, (3, 64, 64), seed=seed)


def _export(path) -> None:
    torch.manual_seed(0)
    torch.onnx.export(
        TinyDetector().eval(), (torch.from_numpy(_images(1, 0)),), str(path), input_names=["x"],
        output_names=["output0"], dynamic_axes={"x": {0: "N"}}, dynamo=False,
    )  # fmt: skip


def _scores_sqnr(path, int8) -> float:
    x = _images(64, 1)
    ref, out = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0][:, 4:]
        for p in (path, int8)
    )
    return float(10 * np.log10(np.sum(ref**2) / np.sum((out - ref) ** 2)))


def test_a_detectors_decoded_scores_keep_their_resolution(tmp_path, monkeypatch):
    path = tmp_path / "det.onnx"
    _export(path)
    calib = Samples({"x": _images(64, 0)}, None)
    cfg = Int8Config(adaround=False, range_search=False)
    summary = quantize_int8(path, tmp_path / "int8.onnx", calib, cfg, None)
    assert summary["quantized_ops"] == {"Conv": 4}
    kept = _scores_sqnr(path, tmp_path / "int8.onnx")
    monkeypatch.setattr(output_tail, "tail", lambda graph: [])
    quantize_int8(path, tmp_path / "all.onnx", calib, cfg, None)
    joined = _scores_sqnr(path, tmp_path / "all.onnx")
    assert kept > joined + 10, (kept, joined)


def test_a_decoded_detection_is_judged_as_other_unless_the_user_says(tmp_path):
    path = tmp_path / "det.onnx"
    _export(path)
    assert output_tail.decoded(onnx.load(str(path)).graph) == {"output0"}
    assert output_kinds.graph_kinds(path, {}) == {"output0": "other"}
    assert output_kinds.graph_kinds(path, {"output_0": "dense"}) == {"output_0": "dense"}
    ctc = nn.Sequential(nn.Conv1d(8, 16, 3), nn.ReLU(), nn.Conv1d(16, 12, 1))
    torch.onnx.export(ctc, (torch.randn(1, 8, 20),), str(tmp_path / "ctc.onnx"), dynamo=False)
    assert output_tail.decoded(onnx.load(str(tmp_path / "ctc.onnx")).graph) == set()


class _Heads(nn.Module):
    """A residual block with a LayerNorm (a transformer layer's end), then one of four heads."""

    def __init__(self, head: str):
        super().__init__()
        self.lin, self.ln, self.cls, self.head = nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 10), head

    def forward(self, x):
        h = self.ln(x + self.lin(x))
        if self.head == "hidden":  # the last hidden state, [N, T, 16]
            return h
        if self.head == "classifier":  # per-token class scores after the norm
            return self.cls(h)
        if self.head == "softmax":  # a softmax written out: a reduction island, but probabilities
            z = self.cls(h)
            e = torch.exp(z - z.amax(-1, keepdim=True))
            return e / e.sum(-1, keepdim=True)
        return nn.functional.normalize(self.cls(h).mean(1), dim=-1)  # a pooled, L2-normalized [N, 10]


@pytest.mark.parametrize("opset", [13, 17])  # LayerNorm written out as ReduceMean/Pow/Sqrt, or the op
def test_normalized_features_are_judged_as_embeddings_and_scores_are_not(tmp_path, opset):
    """A transformer's last hidden state, [N, T, 768], was judged as a sequence of 768 class scores
    (argmax per token, CTC decoding). An output whose tail normalizes its rows is features."""
    kinds = {}
    for head in ("hidden", "classifier", "softmax", "pooled"):
        path = tmp_path / f"{head}.onnx"
        torch.onnx.export(
            _Heads(head).eval(), (torch.randn(2, 5, 16),), str(path), output_names=["h"],
            opset_version=opset, dynamo=False,
        )  # fmt: skip
        kinds[head] = output_kinds.graph_kinds(path, {}).get("h")
    assert kinds == {"hidden": "embedding", "classifier": None, "softmax": None, "pooled": "embedding"}
    assert output_kinds.graph_kinds(tmp_path / "hidden.onnx", {"output_0": "other"}) == {"output_0": "other"}
