"""INT8 of a BERT-style sentence encoder as Hugging Face exports it: additive attention mask filled
with the dtype's minimum, LayerNorm written out as ReduceMean/Pow/Sqrt, and a few hidden channels
with outliers (real BERTs have them). Quantized like a CNN, every op INT8, its embeddings are lost;
edgekit finds the attention, quantizes the matrix products only, and smooths their inputs first."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.benchmarks.metrics import compare_outputs
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

D, HEADS, VOCAB, SEQ = 32, 4, 64, 16


class TinyBert(nn.Module):
    """Two post-LayerNorm encoder layers, eager attention, mean pooling over the mask, L2 norm."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D)
        self.pos = nn.Parameter(torch.randn(SEQ, D) * 0.1)
        self.layers = nn.ModuleList(
            nn.ModuleDict(
                {
                    "qkv": nn.Linear(D, 3 * D),
                    "out": nn.Linear(D, D),
                    "ln1": nn.LayerNorm(D),
                    "ff1": nn.Linear(D, 4 * D),
                    "ff2": nn.Linear(4 * D, D),
                    "ln2": nn.LayerNorm(D),
                }
            )
            for _ in range(2)
        )
        # BERT's outlier dimensions: two channels of each LayerNorm's output 100x the rest, which the
        # layers reading them weigh 100x less (the last LayerNorm, the embedding itself, has none)
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                layer["ln1"].weight[:2] = 100.0
                layer["ff1"].weight[:, :2] /= 100
                if i + 1 < len(self.layers):
                    layer["ln2"].weight[:2] = 100.0
                    self.layers[i + 1]["qkv"].weight[:, :2] /= 100

    def forward(self, input_ids, attention_mask):
        b, s = input_ids.shape
        x = self.embed(input_ids) + self.pos[:s]
        mask = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        for layer in self.layers:
            q, k, v = layer["qkv"](x).reshape(b, s, 3, HEADS, -1).permute(2, 0, 3, 1, 4)
            scores = q @ k.transpose(-1, -2) / math.sqrt(D // HEADS) + mask
            attn = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, D)
            x = layer["ln1"](x + layer["out"](attn))
            x = layer["ln2"](x + layer["ff2"](nn.functional.gelu(layer["ff1"](x))))
        m = attention_mask.unsqueeze(-1).float()
        return nn.functional.normalize((x * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=1)


def _tokens(n: int, seed: int) -> dict[str, np.ndarray]:
    """N padded token sequences of 4 to SEQ real tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(4, SEQ + 1, n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, VOCAB, (n, SEQ)) * mask, "attention_mask": mask}


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory) -> tuple:
    """The tiny encoder exported the way optimum does (opset 14, TorchScript exporter, dynamic axes),
    and its fp32 embeddings of held-out sequences."""
    import onnxruntime as ort

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    example = {k: torch.from_numpy(v) for k, v in _tokens(2, 9).items()}
    axes = {k: {0: "batch", 1: "sequence"} for k in example}
    torch.onnx.export(
        TinyBert().eval(),
        tuple(example.values()),
        str(path),
        input_names=list(example),
        output_names=["sentence_embedding"],
        dynamic_axes=axes,
        opset_version=14,
        dynamo=False,
    )
    held_out = _tokens(64, 1)
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, held_out)[0]
    return path, held_out, ref


def _int8_cosine(bert_onnx, tmp_path, cfg: Int8Config) -> tuple[float, dict]:
    import onnxruntime as ort

    path, held_out, ref = bert_onnx
    out = tmp_path / "int8.onnx"
    summary = quantize_int8(path, out, Samples(_tokens(64, 0), None), cfg, None)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, held_out)[0]
    return compare_outputs(ref, got, "embedding")["cosine_mean"], summary


def test_a_bert_style_encoder_keeps_its_embeddings_in_int8(bert_onnx, tmp_path):
    cosine, summary = _int8_cosine(bert_onnx, tmp_path, Int8Config())
    assert summary["transformer"]["smoothed_activations"] > 0
    assert summary["quantized_ops"]["MatMul"] >= 8 and not summary["fp32_compute_ops"].get("MatMul")
    assert cosine > 0.99


def test_only_the_matrix_products_inputs_are_int8(bert_onnx, tmp_path):
    """LayerNorm, Softmax, GELU, the mask and the residual adds stay float, and so do the products'
    outputs: an INT8 output before the bias add loses the outlier channels again."""
    import onnx

    path, _, _ = bert_onnx
    quantize_int8(path, tmp_path / "int8.onnx", Samples(_tokens(32, 0), None), Int8Config(), None)
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    weights = {i.name for i in graph.initializer}
    producer = {o: n.op_type for n in graph.node for o in n.output}
    readers: dict[str, set] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.op_type)
    activations = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in weights]
    assert activations
    for q in activations:  # quantized only where a matrix product reads it, never a product's output
        dequantized = [d for d in graph.node if d.op_type == "DequantizeLinear" and d.input[0] == q.output[0]]
        assert {op for d in dequantized for op in readers[d.output[0]]} == {"MatMul"}
        assert producer.get(q.input[0]) != "MatMul"


def _outlier_matmul(path) -> dict[str, np.ndarray]:
    """One MatMul whose input has two channels 100x the rest, weighed 100x less (the layer after a
    BERT LayerNorm); returns its input samples."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(32, 16)).astype(np.float32)
    w[:2] /= 100
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")],
        "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    x = rng.normal(size=(256, 32)).astype(np.float32)
    x[:, :2] *= 100
    return {"x": x}


def test_smoothing_moves_outlier_channels_into_the_weights(tmp_path):
    """Per-tensor INT8 of an input with outlier channels leaves the others a level or two; smoothed,
    the same product keeps its precision."""
    import onnxruntime as ort

    from edgekit.benchmarks.metrics import sqnr_db

    x = _outlier_matmul(tmp_path / "mm.onnx")
    ref = ort.InferenceSession(str(tmp_path / "mm.onnx")).run(None, x)[0]
    sqnr = {}
    for alpha in (0.0, 0.95):
        cfg = Int8Config(transformer=True, smooth_alpha=alpha, calibration="minmax")
        summary = quantize_int8(tmp_path / "mm.onnx", tmp_path / f"{alpha}.onnx", Samples(x, None), cfg, None)
        assert summary["transformer"]["smoothed_activations"] == (alpha > 0)
        sqnr[alpha] = sqnr_db(ref, ort.InferenceSession(str(tmp_path / f"{alpha}.onnx")).run(None, x)[0])
    assert sqnr[0.95] > sqnr[0.0] + 10


def test_a_cnn_is_not_taken_for_a_transformer(tmp_path):
    from edgekit.compress.smooth import has_attention
    from tests.models import resnet_blocks, transformer

    graphs = {}
    for name, (module, shapes) in {"cnn": resnet_blocks(), "encoder": transformer()}.items():
        path = tmp_path / f"{name}.onnx"
        torch.onnx.export(module, tuple(torch.randn(s) for s in shapes), str(path), dynamo=False)
        import onnx

        graphs[name] = onnx.load(str(path)).graph
    assert not has_attention(graphs["cnn"])
    assert has_attention(graphs["encoder"])


def test_compress_leaves_the_working_directory_as_it_was(edgekit, bert_onnx, tmp_path):
    """The CLI on the encoder (whose symbolic shape inference ORT gives up on, writing its partial
    model to the working directory) leaves nothing in the directory it ran from."""
    path = bert_onnx[0]
    np.savez(tmp_path / "calib.npz", **_tokens(32, 0))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "out"
    r = edgekit("compress", path, "--int8", "--calib", tmp_path / "calib.npz", "-o", out, cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert list(cwd.iterdir()) == []


def _compress_bert(bert_onnx, tmp_path, mode: str) -> tuple[dict, list[str]]:
    """The int8 pass's summary and verification of BERT compressed with dynamic_matmul MODE, and
    the op types of its artifact."""
    import onnx

    from edgekit.artifact import read_manifest
    from edgekit.passes import Step
    from edgekit.pipeline import CompressRequest, compress

    path, _, _ = bert_onnx
    np.savez(tmp_path / "calib.npz", **_tokens(48, 0))
    np.savez(tmp_path / "eval.npz", **_tokens(48, 1))
    out = tmp_path / mode
    req = CompressRequest(
        model=path,
        out=out,
        chain=[Step("int8", Int8Config(dynamic_matmul=mode))],
        calib=str(tmp_path / "calib.npz"),
        eval=str(tmp_path / "eval.npz"),
    )
    compress(req)
    manifest = read_manifest(out)
    summary = next(p.summary for p in manifest.passes if p.name == "int8")
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    saturates = manifest.target_cpu["u8s8_saturates"]
    return {"summary": summary, "verification": manifest.verification["int8"], "saturates": saturates}, ops


def test_dynamic_matmul_is_chosen_only_where_measured_faster_and_as_faithful(bert_onnx, tmp_path):
    """With "always" the artifact is ORT's dynamic quantization (MatMulInteger); with "auto" the
    record holds both candidates and the choice follows the rule: faster by the margin and within
    the tolerance of the static model's fidelity, else static with the reason."""
    from edgekit.compress import dynamic_matmul

    always, ops = _compress_bert(bert_onnx, tmp_path, "always")
    assert always["summary"]["transformer"]["choice"]["recipe"].startswith("dynamic MatMul")
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert always["summary"]["integer_ops"]["MatMulInteger"] == ops.count("MatMulInteger")
    assert "qdq_pairs" in always["summary"]["static_candidate"] and "qdq_pairs" not in always["summary"]
    assert always["verification"]["fidelity"]["output_0"]["cosine_mean"] > 0.95

    auto, ops = _compress_bert(bert_onnx, tmp_path, "auto")
    choice = auto["summary"]["transformer"]["choice"]
    candidate = choice["dynamic_candidate"]
    assert candidate["seven_bit_weights"] == auto["saturates"]  # no VNNI: 7-bit weights cannot saturate
    assert candidate["fidelity"]["output_0"]["kind"] == "embedding"
    dynamic = "MatMulInteger" in ops
    assert dynamic == choice["recipe"].startswith("dynamic")
    if dynamic:
        assert candidate["time_vs_static"] <= dynamic_matmul.FASTER and "why_not_dynamic" not in choice
    else:
        assert choice["why_not_dynamic"] and "QuantizeLinear" in ops


def test_the_dynamic_candidate_must_keep_each_outputs_main_fidelity():
    from edgekit.compress.dynamic_matmul import shortfall

    static = {"fidelity": {"output_0": {"kind": "embedding", "cosine_mean": 0.997, "sqnr_db": 22.0}}}
    close = {"fidelity": {"output_0": {"kind": "embedding", "cosine_mean": 0.993, "sqnr_db": 18.0}}}
    far = {"fidelity": {"output_0": {"kind": "embedding", "cosine_mean": 0.961, "sqnr_db": 9.0}}}
    assert shortfall(static, close) is None
    assert "mean cosine 0.9610 vs 0.9970" in shortfall(static, far)
    other = {"fidelity": {"output_0": {"kind": "other", "sqnr_db": 30.0}}}
    assert shortfall(other, {"fidelity": {"output_0": {"kind": "other", "sqnr_db": 26.0}}})
    assert shortfall({**static, "top1": 0.9}, {**close, "top1": 0.88}).startswith("top-1")


class ConvThenAttention(nn.Module):
    """A text recognizer's shape (PP-OCRv4's SVTR): a convolutional stem, then self-attention over
    the columns, per-column class scores."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.BatchNorm2d(16),
            nn.Hardswish(),
            nn.Conv2d(16, D, 3, (2, 1), 1),
            nn.ReLU(),
        )
        self.qkv, self.out, self.head = nn.Linear(D, 3 * D), nn.Linear(D, D), nn.Linear(D, 11)

    def forward(self, x):
        f = self.stem(x).mean(2).transpose(1, 2)  # (N, W, D)
        q, k, v = self.qkv(f).chunk(3, -1)
        f = f + self.out((q @ k.transpose(1, 2) / math.sqrt(D)).softmax(-1) @ v)
        return self.head(f).softmax(-1)


def _softmax_as_upgraded_from_opset_12(model) -> None:
    """Each Softmax of MODEL as onnx's version converter writes an opset-12 one whose input rank it
    cannot infer (PaddlePaddle's exports): Flatten -> Softmax -> Reshape to the input's shape."""
    from onnx import helper

    nodes = []
    for n in model.graph.node:
        if n.op_type != "Softmax":
            nodes.append(n)
            continue
        axis, x = n.attribute[0].i, n.input[0]
        nodes += [
            helper.make_node("Flatten", [x], [x + "_2d"], axis=axis),
            helper.make_node("Softmax", [x + "_2d"], [x + "_p"], axis=-1),
            helper.make_node("Shape", [x], [x + "_shape"]),
            helper.make_node("Reshape", [x + "_p", x + "_shape"], list(n.output)),
        ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def test_a_hybrids_attention_is_found_in_an_opset_12_export_and_its_convolutions_stay_int8(tmp_path):
    """PaddlePaddle exports at opset 12; upgraded to 13 (INT8 needs it), each Softmax reads a Flatten
    of its scores, which hid the attention: every op was quantized and PP-OCRv4's recognizer kept 69 %
    of its decoded text to NNCF's 88 %. Found, the products are quantized with float outputs, but the
    convolutions keep INT8 ones: ONNX Runtime has no Conv with a float output, so one ran as an fp32
    Conv after dequantizing its weights."""
    import onnx
    import onnxruntime as ort

    from edgekit.compress.smooth import has_attention

    torch.manual_seed(0)
    model = ConvThenAttention().eval()
    path = tmp_path / "hybrid.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 16, 64),), str(path), opset_version=13, dynamo=False)
    upgraded = onnx.load(str(path))
    _softmax_as_upgraded_from_opset_12(upgraded)
    assert has_attention(upgraded.graph)
    onnx.save(upgraded, str(path))
    x = np.random.default_rng(0).normal(size=(32, 3, 16, 64)).astype(np.float32)
    name = upgraded.graph.input[0].name
    summary = quantize_int8(
        path, tmp_path / "int8.onnx", Samples({name: x}, None), Int8Config(adaround=False), 1
    )
    assert "transformer" in summary and summary["quantized_ops"]["Conv"] == 2
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "fused.onnx")
    ort.InferenceSession(str(tmp_path / "int8.onnx"), so, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node]
    assert fused.count("QLinearConv") == 2 and "Conv" not in fused


def test_attention_fused_by_onnx_runtimes_optimizer_is_quantized_as_a_transformer(tmp_path):
    """onnxruntime.transformers' optimizer (Olive, ORT's BERT recipes) fuses attention into one
    com.microsoft Attention node, its Softmax inside: real all-MiniLM-L6-v2 so fused was quantized as a
    CNN, every product's output INT8 and nothing smoothed (cosine 0.925; 0.998 with the recipe)."""
    import onnx
    import onnxruntime as ort

    _fused(tmp_path / "fused.onnx", mask=False)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, SEQ, D)).astype(np.float32)
    summary = quantize_int8(
        tmp_path / "fused.onnx", tmp_path / "int8.onnx", Samples({"x": x}, None), Int8Config(), None
    )
    # the MatMul statically, the Attention as ORT's QAttention (edgekit.compress.fused_attention)
    assert "transformer" in summary and summary["quantized_ops"] == {"Attention": 1, "MatMul": 1}
    out = onnx.load(str(tmp_path / "int8.onnx")).graph
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] == "y" for n in out.node)  # a float output
    run = [
        ort.InferenceSession(str(tmp_path / p), providers=["CPUExecutionProvider"])
        for p in ("fused.onnx", "int8.onnx")
    ]
    ref, got = (s.run(None, {"x": x[:8]})[0] for s in run)
    assert compare_outputs(ref.reshape(8, -1), got.reshape(8, -1), "embedding")["cosine_mean"] > 0.99


def _fused(path, mask: bool) -> None:
    """One attention layer as onnxruntime.transformers' optimizer leaves it (a com.microsoft
    Attention node, Q, K, V in one weight) and a projection after it: x [B, SEQ, D] (and with MASK
    an int32 mask [B, SEQ]) -> Attention -> MatMul -> y."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {
        "qkv_w": rng.standard_normal((D, 3 * D)).astype(np.float32) * 0.2,
        "qkv_b": rng.standard_normal(3 * D).astype(np.float32) * 0.1,
        "out_w": rng.standard_normal((D, D)).astype(np.float32) * 0.2,
    }
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, D])]
    if mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, ["batch", SEQ]))
    attention = ["x", "qkv_w", "qkv_b", *(["mask"] if mask else [])]
    graph = helper.make_graph(
        [
            helper.make_node(
                "Attention", attention, ["attn"], "Attention_0", domain="com.microsoft", num_heads=HEADS
            ),
            helper.make_node("MatMul", ["attn", "out_w"], ["y"], "MatMul_out"),
        ],
        "fused",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, D])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 14), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 8
    onnx.save(model, str(path))


def _masked(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((n, SEQ), np.int32)
    mask[:, SEQ // 2 :] = rng.integers(0, 2, (n, SEQ - SEQ // 2))
    return {"x": rng.normal(0, 1, (n, SEQ, D)).astype(np.float32), "mask": mask}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return compare_outputs(a.reshape(len(a), -1), b.reshape(len(b), -1), "embedding")["cosine_mean"]


def test_qattention_computes_what_the_fused_attention_does(tmp_path):
    """ORT's static quantizer has no Attention: its Q, K, V projections stayed fp32 (a quarter of
    a BERT layer's multiply-adds). QAttention, written by edgekit, runs them in INT8."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgekit.compress import fused_attention
    from edgekit.target_cpu import here

    _fused(tmp_path / "fp32.onnx", mask=True)
    model = tmp_path / "q.onnx"
    model.write_bytes((tmp_path / "fp32.onnx").read_bytes())
    assert fused_attention.quantize(model, ["Attention_0"]) == 0  # excluded: left as it was
    bits = 7 if here().saturates else 8  # as compress makes it for this CPU (no VNNI: 7-bit weights)
    assert fused_attention.quantize(model, (), bits) == 1
    graph = onnx.load(str(model)).graph
    assert [n.op_type for n in graph.node] == ["DynamicQuantizeLinear", "QAttention", "MatMul"]
    assert "qkv_w" not in {i.name for i in graph.initializer}  # the fp32 weight went with its node
    feeds = _masked(8, 1)
    ref = ort.InferenceSession(str(tmp_path / "fp32.onnx")).run(None, feeds)[0]
    out = ort.InferenceSession(str(model)).run(None, feeds)[0]
    assert _cosine(ref, out) > 0.999
    # the int8 weights are what the outputs are made of: zeroing one head's query columns moves them
    broken = onnx.load(str(model))
    w = next(i for i in broken.graph.initializer if i.name.endswith("w_q"))
    levels = numpy_helper.to_array(w).copy()
    levels[:, : D // HEADS] = 0
    w.CopyFrom(numpy_helper.from_array(levels, w.name))
    moved = ort.InferenceSession(broken.SerializeToString()).run(None, feeds)[0]
    assert _cosine(ref, moved) < _cosine(ref, out) - 0.001


def _fused_compressed(tmp_path, target: str) -> tuple[dict, list[str]]:
    """The int8 summary and the artifact's ops of the masked fused layer compressed for TARGET."""
    import onnx

    from edgekit.artifact import read_manifest
    from edgekit.passes import Step
    from edgekit.pipeline import CompressRequest, compress

    _fused(tmp_path / "fp32.onnx", mask=True)
    np.savez(tmp_path / "calib.npz", **_masked(32, 2))
    np.savez(tmp_path / "eval.npz", **_masked(32, 3))
    req = CompressRequest(
        model=tmp_path / "fp32.onnx",
        out=tmp_path / target,
        chain=[Step("int8", Int8Config(dynamic_matmul="never"))],
        calib=str(tmp_path / "calib.npz"),
        eval=str(tmp_path / "eval.npz"),
        target=target,
    )
    compress(req)
    summary = next(p.summary for p in read_manifest(tmp_path / target).passes if p.name == "int8")
    return summary, [n.op_type for n in onnx.load(str(tmp_path / target / "model.onnx")).graph.node]


def test_compress_int8_runs_fused_attention_in_int8_and_counts_it(tmp_path):
    summary, ops = _fused_compressed(tmp_path, "ort")
    assert "QAttention" in ops and "Attention" not in ops
    assert summary["quantized_ops"] == {"Attention": 1, "MatMul": 1} and not summary["fp32_compute_ops"]
    # for OpenVINO, which cannot read QAttention, it stays fp32, and the summary says so
    summary, ops = _fused_compressed(tmp_path, "openvino")
    assert "QAttention" not in ops and "Attention" in ops
    assert summary["fp32_compute_ops"] == {"Attention": 1}


def _token_matmul(path) -> dict[str, np.ndarray]:
    """One MatMul of a transformer's form: token rows (batch, SEQ, 32) times a constant (32, 24)
    weight; returns its input samples (correlated channels, as hidden states are)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(size=(32, 24)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="dense")],
        "tokens",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", SEQ, 24])],
        [numpy_helper.from_array(w, "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    mix = rng.normal(size=(32, 32)) / 4
    return {"x": (rng.normal(size=(64, SEQ, 32)) @ mix).astype(np.float32)}


def test_adaround_rounds_a_transformers_weight_products(tmp_path):
    """A MatMul reading token rows and a constant weight is rounded by AdaRound like a Gemm: every
    level the floor or ceil of W / s, and the product's error over the calibration tokens below
    nearest rounding's."""
    import onnx

    from edgekit.compress.bias_correction import weight_levels

    samples = _token_matmul(tmp_path / "mm.onnx")
    x = samples["x"].astype(float)
    w = onnx.numpy_helper.to_array(onnx.load(str(tmp_path / "mm.onnx")).graph.initializer[0]).astype(float)
    errors = {}
    for on in (False, True):
        # the VNNI form on any CPU: an AVX2 form's pair capping after AdaRound may lower a level further
        cfg = Int8Config(
            transformer=True, smooth_alpha=0, adaround=on, bias_correction=False, target_cpu="x86-vnni"
        )
        out = tmp_path / f"{on}.onnx"
        summary = quantize_int8(tmp_path / "mm.onnx", out, Samples(samples, None), cfg, None)
        graph = onnx.load(str(out)).graph
        inits = {i.name: i for i in graph.initializer}
        dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)
        q, scale, zp = weight_levels(dq, inits)
        assert np.all((q == np.floor(w / scale + zp)) | (q == np.ceil(w / scale + zp)))
        errors[on] = float(((x @ w - x @ ((q - zp) * scale)) ** 2).mean())
        assert ("adaround" in summary) == on
    assert summary["adaround"]["layers"] == 1 and summary["adaround"]["changed_weights"] > 0
    assert errors[True] < 0.8 * errors[False], errors
