"""A transformer's outputs per token are judged where its attention mask is 1: the padded positions'
outputs are computed from nothing the model attends to, and judged with them all-MiniLM-L6-v2's
last hidden state fell under the embedding floor in INT8 where its real tokens kept cosine 0.997."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from edgekit.benchmarks.metrics import compare_outputs, kind_line
from edgekit.compress import padding_mask

D, VOCAB, SEQ = 16, 50, 12


class Encoder(nn.Module):
    """Token and segment embeddings, one attention layer over a padding mask, a LayerNorm: the last
    hidden state per token, [N, T, D]."""

    def __init__(self):
        super().__init__()
        self.tok, self.seg = nn.Embedding(VOCAB, D), nn.Embedding(2, D)
        self.qkv, self.out, self.ln = nn.Linear(D, 3 * D), nn.Linear(D, D), nn.LayerNorm(D)

    def forward(self, input_ids, attention_mask, token_type_ids):
        x = self.tok(input_ids) + self.seg(token_type_ids)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        scores = q @ k.transpose(-1, -2) / D**0.5
        scores = scores + (1.0 - attention_mask[:, None, :].float()) * torch.finfo(torch.float32).min
        return self.ln(x + self.out(scores.softmax(-1) @ v))


def _tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    """N sentences of 3 to SEQ tokens padded to SEQ (mask 1 then 0), two segments each."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, SEQ + 1, n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    segments = (np.arange(SEQ)[None] >= (lengths[:, None] // 2)).astype(np.int64) * mask
    return {
        "input_ids": rng.integers(1, VOCAB, (n, SEQ)) * mask,
        "attention_mask": mask,
        "token_type_ids": segments,
    }


@pytest.fixture(scope="module")
def encoder_onnx(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pad") / "encoder.onnx"
    feeds = _tokens(2, 0)
    axes = {k: {0: "batch", 1: "seq"} for k in feeds}
    torch.onnx.export(
        Encoder().eval(), tuple(torch.from_numpy(v) for v in feeds.values()), str(path),
        input_names=list(feeds), output_names=["h"], dynamic_axes={**axes, "h": {0: "batch", 1: "seq"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    return path


def test_the_mask_is_the_input_that_reaches_the_softmax_without_a_lookup(encoder_onnx):
    # input_ids and token_type_ids reach it too, through their embedding tables: not masks
    assert padding_mask.inputs(onnx.load(str(encoder_onnx)).graph) == ["attention_mask"]


def test_outputs_per_token_are_judged_on_the_tokens_only():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, SEQ, D))
    valid = _tokens(4, 1)["attention_mask"].astype(bool)
    out = ref + 0.01 * rng.standard_normal(ref.shape)
    out[~valid] = -ref[~valid]  # the padding's outputs: anything
    whole, kept = compare_outputs(ref, out, "embedding"), compare_outputs(ref, out, "embedding", valid)
    assert whole["cosine_min"] < -0.9 and kept["cosine_min"] > 0.99
    assert kept["padding_left_out"] == int((~valid).sum()) and kept["sqnr_db"] > 30
    assert kind_line(kept).startswith("embedding (padded positions left out): cosine")
    # per-token class scores: the padding neither counts nor breaks a sequence
    seq = compare_outputs(ref, out, "sequence", valid)
    assert seq["position_agreement"] == seq["sequence_agreement"] == 1.0
    assert compare_outputs(ref, out, "sequence")["position_agreement"] < 0.9


def test_search_judges_its_candidates_as_compress_does(encoder_onnx):
    """`edgekit search` scores every candidate against fp32 as compress checks its model: the hidden
    state by the graph's kind (an embedding, though named h) on its tokens only; a kind the config
    declares stays."""
    from edgekit.data import Samples
    from edgekit.evaluate import quality
    from edgekit.search import judged

    kinds, evals = judged(encoder_onnx, {}, Samples(_tokens(8, 3), None))
    assert kinds == {"h": "embedding"} and evals.description["padding_mask"] == "attention_mask"
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((8, SEQ, D)).astype(np.float32)
    out = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    out[evals.inputs["attention_mask"] == 0] = 0  # the padding's outputs: anything
    fid = quality([ref], [out], evals, "eval", ["h"], kinds)["fidelity"]["output_0"]
    assert fid["kind"] == "embedding" and fid["cosine_min"] > 0.99 and fid["padding_left_out"] > 0
    declared = {"output_0": "other"}
    assert judged(encoder_onnx, declared, Samples(_tokens(8, 3), None))[0] == declared


def test_compress_judges_a_hidden_state_on_its_tokens(edgekit, encoder_onnx, tmp_path):
    np.savez(tmp_path / "calib.npz", **_tokens(64, 2))  # no --eval: held-out samples of it
    r = edgekit("compress", encoder_onnx, "--int8", "--calib", tmp_path / "calib.npz", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "edgekit.json").read_text())
    assert manifest["data"]["calibration"]["padding_mask"] == "attention_mask"
    fid = manifest["verification"]["int8"]["fidelity"]["output_0"]
    assert fid["kind"] == "embedding"  # a LayerNorm's rows, though named h
    assert fid["padding_left_out"] > 0 and fid["cosine_mean"] > 0.95
    # bench --eval judges the artifact as compress did: on the positions the mask it found keeps
    r = edgekit("compress", encoder_onnx, "--calib", tmp_path / "calib.npz", "-o", tmp_path / "fp32")
    assert r.returncode == 0, r.stderr
    args = ("--eval", tmp_path / "calib.npz", "--reference", tmp_path / "fp32", "--json", tmp_path / "b.json")
    r = edgekit("bench", tmp_path / "out", *args)
    assert r.returncode == 0, r.stderr
    (record,) = json.loads((tmp_path / "b.json").read_text())
    padded = int((_tokens(64, 2)["attention_mask"] == 0).sum())
    assert record["accuracy"]["fidelity"]["output_0"]["padding_left_out"] == padded
    assert record["accuracy"]["fidelity"]["output_0"]["kind"] == "embedding"  # as compress judged it
