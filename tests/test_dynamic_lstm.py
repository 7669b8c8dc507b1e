"""LSTMs in INT8 through ONNX Runtime's DynamicQuantizeLSTM (edgekit.compress.dynamic_lstm): an
LSTM-only model is quantized instead of refused, a model's LSTMs join its static INT8 where as
faithful and faster, and weights computed from constants inside an If branch (Silero VAD's
export) are found."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.artifact import read_manifest
from edgekit.compress import dynamic_lstm
from edgekit.compress.quantize import Int8Config
from edgekit.errors import EdgekitError
from edgekit.passes import Step
from edgekit.pipeline import CompressRequest, compress


class _Recurrent(torch.nn.Module):
    def __init__(self, rnn: type, head: bool):
        super().__init__()
        self.rnn = rnn(20, 48, num_layers=2, batch_first=True, bidirectional=True)
        self.head = torch.nn.Linear(96, 5) if head else None

    def forward(self, x):
        y = self.rnn(x)[0]
        return self.head(y) if self.head is not None else y


def _export(path, rnn=torch.nn.LSTM, head=False) -> None:
    torch.manual_seed(0)
    torch.onnx.export(
        _Recurrent(rnn, head).eval(),
        (torch.randn(1, 30, 20),),
        str(path),
        input_names=["feats"],
        output_names=["out"],
        dynamic_axes={"feats": {0: "batch"}},
        dynamo=False,
        opset_version=17,
    )


def _sqnr(path_a, path_b, feeds: dict) -> float:
    a, b = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        for p in (path_a, path_b)
    )
    return float(10 * np.log10((a**2).mean() / ((a - b) ** 2).mean()))


def test_lstm_weights_become_int8_per_gate_row_and_the_outputs_stay_close(tmp_path):
    """Both weight widths replace the LSTMs and drop their fp32 weights; where this CPU's u8 x s8
    pair sums saturate (no VNNI) the 8-bit weights lose to the 7-bit ones, which cannot."""
    from edgekit.target_cpu import here

    _export(tmp_path / "fp32.onnx")
    feeds = {"feats": np.random.default_rng(1).normal(size=(8, 30, 20)).astype(np.float32)}
    sqnr = {}
    for seven_bit in (False, True):
        out = tmp_path / f"q{seven_bit}.onnx"
        assert dynamic_lstm.quantize(tmp_path / "fp32.onnx", out, seven_bit) == 2
        model = onnx.load(str(out))
        ops = [n.op_type for n in model.graph.node]
        assert ops.count("DynamicQuantizeLSTM") == 2 and "LSTM" not in ops
        ints = [
            numpy_helper.to_array(t).ravel()
            for t in model.graph.initializer
            if t.data_type == TensorProto.INT8
        ]
        assert np.abs(np.concatenate(ints)).max() == (64 if seven_bit else 127)
        assert out.stat().st_size < 0.4 * (tmp_path / "fp32.onnx").stat().st_size  # fp32 weights gone
        sqnr[seven_bit] = _sqnr(tmp_path / "fp32.onnx", out, feeds)
    assert sqnr[True] > 35
    if here().saturates:
        assert sqnr[False] < sqnr[True] - 6
    else:
        assert sqnr[False] > sqnr[True]


def _lstm_in_a_branch(path) -> np.ndarray:
    """x [T, N, 4] -> If(flag): an LSTM whose W and R are computed inside the branch (Slice and
    Concat of outer initializers, as torch's gate reordering exports), else Identity."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.4, (1, 32, 4)).astype(np.float32)
    r = rng.normal(0, 0.4, (1, 32, 8)).astype(np.float32)
    consts = [
        numpy_helper.from_array(w, "w_raw"),
        numpy_helper.from_array(r, "r_raw"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([16], np.int64), "half"),
        numpy_helper.from_array(np.array([32], np.int64), "end"),
        numpy_helper.from_array(np.array([1], np.int64), "axis"),
    ]
    nodes = []
    for k in ("w", "r"):  # the two halves of the gate rows swapped
        nodes += [
            helper.make_node("Slice", [f"{k}_raw", "zero", "half", "axis"], [f"{k}_a"]),
            helper.make_node("Slice", [f"{k}_raw", "half", "end", "axis"], [f"{k}_b"]),
            helper.make_node("Concat", [f"{k}_b", f"{k}_a"], [k], axis=1),
        ]
    nodes.append(helper.make_node("LSTM", ["x", "w", "r"], ["y"], "lstm", hidden_size=8))
    then = helper.make_graph(nodes, "then", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["x_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("x_out", TensorProto.FLOAT, None)],
    )
    save_onnx(
        path,
        [helper.make_node("If", ["flag"], ["out"], "if", then_branch=then, else_branch=other)],
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [10, "N", 4]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        consts,
    )


def test_weights_computed_from_constants_inside_a_branch_are_found(tmp_path):
    _lstm_in_a_branch(tmp_path / "fp32.onnx")
    assert dynamic_lstm.count(tmp_path / "fp32.onnx") == 1
    assert dynamic_lstm.quantize(tmp_path / "fp32.onnx", tmp_path / "q.onnx", seven_bit=True) == 1
    model = onnx.load(str(tmp_path / "q.onnx"))
    branch = next(a.g for a in model.graph.node[0].attribute if a.name == "then_branch")
    assert [n.op_type for n in branch.node] == ["DynamicQuantizeLSTM"]  # the Slices and Concats are gone
    assert [t.name for t in model.graph.initializer] == []  # and the fp32 weights they read
    x = np.random.default_rng(1).normal(size=(10, 3, 4)).astype(np.float32)
    feeds = {"x": x, "flag": np.array(True)}
    assert _sqnr(tmp_path / "fp32.onnx", tmp_path / "q.onnx", feeds) > 30


def _compress(path, out, data, mode="auto"):
    req = CompressRequest(
        model=path,
        out=out,
        chain=[Step("int8", Int8Config(dynamic_lstm=mode))],
        calib=str(data),
        eval=str(data),
    )
    compress(req)
    manifest = read_manifest(out)
    return next(p.summary for p in manifest.passes if p.name == "int8"), manifest.verification["int8"]


def test_an_lstm_only_model_is_quantized_not_refused(tmp_path):
    """No op ORT's static quantizer takes: the LSTMs alone are the INT8 model. "always" keeps it;
    "auto" keeps it where faster than fp32 here, else refuses saying how slow it was; "never"
    refuses, pointing at the setting."""
    from edgekit.compress import dynamic_matmul

    _export(tmp_path / "fp32.onnx")
    np.savez(
        tmp_path / "data.npz", feats=np.random.default_rng(2).normal(size=(24, 30, 20)).astype(np.float32)
    )
    summary, verification = _compress(
        tmp_path / "fp32.onnx", tmp_path / "always", tmp_path / "data.npz", "always"
    )
    assert summary["quantized_ops"] == {"LSTM": 2} and summary["qdq_pairs"] == 0
    assert summary["lstm"]["recipe"].startswith("dynamic LSTM") and summary["lstm"]["dynamic_lstms"] == 2
    assert verification["fidelity"]["output_0"]["sqnr_db"] > 25
    try:
        summary, _ = _compress(tmp_path / "fp32.onnx", tmp_path / "auto", tmp_path / "data.npz")
        assert summary["lstm"]["dynamic_candidate"]["time_vs_static"] <= dynamic_matmul.FASTER
    except EdgekitError as e:
        assert "x the fp32 model's time here" in str(e) and "dynamic_lstm: always" in str(e)
        assert not (tmp_path / "auto").exists()
    with pytest.raises(EdgekitError, match=r"recurrent \(LSTM x2\).*dynamic_lstm: auto"):
        _compress(tmp_path / "fp32.onnx", tmp_path / "never", tmp_path / "data.npz", "never")
    assert not (tmp_path / "never").exists()


def test_lstms_beside_static_int8_follow_the_rule_and_grus_stay_fp32(edgekit, tmp_path):
    """A BiLSTM with a static-INT8 head: with "auto" the record holds the candidate and the choice
    follows the rule (faster by the margin, as faithful); the LSTM-only test shows "always". A
    GRU-only model is refused in one sentence, exit 2."""
    from edgekit.compress import dynamic_matmul

    _export(tmp_path / "head.onnx", head=True)
    np.savez(
        tmp_path / "data.npz", feats=np.random.default_rng(3).normal(size=(24, 30, 20)).astype(np.float32)
    )
    auto, _ = _compress(tmp_path / "head.onnx", tmp_path / "auto", tmp_path / "data.npz")
    choice = auto["lstm"]
    dynamic = choice["recipe"].startswith("dynamic")
    assert ("LSTM" in auto["quantized_ops"]) == dynamic
    if dynamic:
        assert choice["dynamic_candidate"]["time_vs_static"] <= dynamic_matmul.FASTER
    else:
        assert choice["why_not_dynamic"] and auto["fp32_compute_ops"] == {"LSTM": 2}

    _export(tmp_path / "gru.onnx", rnn=torch.nn.GRU)
    r = edgekit(
        "compress", tmp_path / "gru.onnx", "--int8", "--calib", tmp_path / "data.npz", "-o", tmp_path / "g"
    )
    assert r.returncode == 2 and "recurrent (GRU x2)" in r.stderr and "Traceback" not in r.stderr
