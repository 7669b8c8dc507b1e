"""Float elementwise ops of a QDQ model written as ones ONNX Runtime runs in its INT8 kernels
(edgekit.compress.qlinear_forms): a HardSigmoid as a QLinearAdd, a spatial ReduceMean as a
QLinearGlobalAveragePool (a classifier's pooling too), a Div by a constant folded into a quantizer's
scale."""

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgekit.compress import qlinear_forms
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


class _Reader(CalibrationDataReader):
    def __init__(self, x):
        self.items = iter([{"x": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def _conv(name: str, cin: int, cout: int, rng) -> list:
    return [
        numpy_helper.from_array((rng.standard_normal((cout, cin, 1, 1)) / cin**0.5).astype(np.float32), name),
        numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), f"{name}_b"),
    ]


def _mobile_block(path, scaled_by: str | None = None):
    """x [N, 8, 8, 8] -> 1x1 Conv -> Hardswish (x * HardSigmoid(x); where SCALED_BY is "Div",
    paddle2onnx's x * Clip(x + 3, 0, 6) / 6, "Mul" tf2onnx's ... * (1 / 6)) -> squeeze-and-excitation
    (ReduceMean over H, W kept, Conv, Relu, Conv, HardSigmoid, Mul) -> 1x1 Conv -> y: MobileNetV3's
    block."""
    rng = np.random.default_rng(0)
    inits = [
        *_conv("w0", 8, 16, rng),
        *_conv("w1", 16, 8, rng),
        *_conv("w2", 8, 16, rng),
        *_conv("w3", 16, 8, rng),
    ]
    inits += [
        numpy_helper.from_array(np.array(v, np.float32), n)
        for n, v in (("three", 3), ("zero", 0), ("six", 6), ("sixth", 1 / 6))
    ]
    if scaled_by:
        swish = [
            helper.make_node("Add", ["c0", "three"], ["p0"]),
            helper.make_node("Clip", ["p0", "zero", "six"], ["p1"]),
            helper.make_node("Mul", ["c0", "p1"], ["p2"]),
            helper.make_node(scaled_by, ["p2", "six" if scaled_by == "Div" else "sixth"], ["a0"]),
        ]
    else:
        swish = [
            helper.make_node("HardSigmoid", ["c0"], ["h0"], alpha=1 / 6, beta=0.5),
            helper.make_node("Mul", ["c0", "h0"], ["a0"]),
        ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "w0_b"], ["c0"], name="expand"),
        *swish,
        helper.make_node("ReduceMean", ["a0"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node("Conv", ["m", "w1", "w1_b"], ["s1"], name="squeeze"),
        helper.make_node("Relu", ["s1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "w2_b"], ["s2"], name="excite"),
        helper.make_node("HardSigmoid", ["s2"], ["g"], alpha=1 / 6, beta=0.5),
        helper.make_node("Mul", ["a0", "g"], ["e"]),
        helper.make_node("Conv", ["e", "w3", "w3_b"], ["y"], name="project"),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "block", [x_info], [y_info], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _ort_quantized(src, model, copy, x) -> None:
    """SRC quantized by ORT's quantizer in edgekit's default INT8 form to MODEL and to COPY."""
    quantize_static(
        str(src), str(model), _Reader(x), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    shutil.copy(model, copy)


def _quantized(tmp_path, scaled_by: str | None = None):
    """The block quantized in edgekit's default INT8 form by ORT's quantizer, a rewritten copy, the
    counts, and inputs like the calibration data."""
    src, model, rewritten = tmp_path / "fp32.onnx", tmp_path / "int8.onnx", tmp_path / "rewritten.onnx"
    _mobile_block(src, scaled_by)
    x = np.random.default_rng(1).uniform(-2, 2, (32, 8, 8, 8)).astype(np.float32)
    _ort_quantized(src, model, rewritten, x)
    return src, model, rewritten, qlinear_forms.rewrite(rewritten), x


def _run(path, x, optimized=None):
    """PATH's y on X in ORT (its graph optimizations on; the optimized graph to OPTIMIZED)."""
    options = ort.SessionOptions()
    if optimized:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _run_output(path, x):
    """PATH's only output on X in ORT."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_hard_sigmoid_and_spatial_mean_run_in_int8_kernels_with_the_same_outputs(tmp_path):
    """Both HardSigmoids (Hardswish's and the gate's) become Adds of 3 whose quantizer's saturation
    clips, the ReduceMean a GlobalAveragePool: in ORT's optimized graph QLinearAdd and
    QLinearGlobalAveragePool, no float HardSigmoid or ReduceMean; the outputs within one level of
    the output quantizer of the model as ORT's quantizer wrote it (equal but for float rounding)."""
    _, model, rewritten, counts, x = _quantized(tmp_path)
    assert counts == {"hard_sigmoid_as_add": 2, "mean_as_global_pool": 1}
    assert {"HardSigmoid", "ReduceMean"} <= _ops(model)
    y = _run(rewritten, x, tmp_path / "opt.onnx")
    fused = _ops(tmp_path / "opt.onnx")
    assert {"QLinearAdd", "QLinearGlobalAveragePool"} <= fused and not {"HardSigmoid", "ReduceMean"} & fused
    before = _run(model, x)
    level = np.abs(before).max() / 127
    assert np.abs(y - before).max() <= level and np.mean(y == before) > 0.99


def test_a_hard_sigmoid_whose_levels_reach_above_one_is_left_as_it_is(tmp_path):
    """Where the quantizer after a HardSigmoid spans more than [0, 1] (a range search widened it),
    the saturation would not clip at 1: that HardSigmoid stays."""
    _, model, _, _, _ = _quantized(tmp_path)
    m = onnx.load(str(model))
    inits = {i.name: i for i in m.graph.initializer}
    gate = next(n for n in m.graph.node if n.op_type == "HardSigmoid" and n.output[0] == "g")
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == gate.output[0])
    inits[q.input[1]].CopyFrom(numpy_helper.from_array(np.array(1.3 / 255, np.float32), q.input[1]))
    onnx.save(m, str(tmp_path / "wide.onnx"))
    assert qlinear_forms.rewrite(tmp_path / "wide.onnx") == {
        "hard_sigmoid_as_add": 1,
        "mean_as_global_pool": 1,
    }
    assert sum(n.op_type == "HardSigmoid" for n in onnx.load(str(tmp_path / "wide.onnx")).graph.node) == 1


@pytest.mark.parametrize("scaled_by", ["Div", "Mul"])
def test_a_divide_by_a_constant_is_folded_into_the_quantizer_before_it(tmp_path, scaled_by):
    """paddle2onnx's Hardswish, x * Clip(x + 3, 0, 6) / 6 (tf2onnx's: * (1 / 6)): the Div (Mul) and
    its quantizer are gone (the product's quantizer takes their levels, its scale times 6), no float
    op of it left in ORT's graph, and the outputs as close to fp32's as before (one rounding fewer)
    and within a level of them."""
    src, model, rewritten, counts, x = _quantized(tmp_path, scaled_by)
    assert counts["scalar_divide_folded"] == 1
    nodes = [onnx.load(str(p)).graph.node for p in (model, rewritten)]
    for op in (scaled_by, "QuantizeLinear"):  # one of each fewer
        assert sum(n.op_type == op for n in nodes[1]) == sum(n.op_type == op for n in nodes[0]) - 1
    y = _run(rewritten, x, tmp_path / "opt.onnx")
    assert not {"Div", "Mul"} & _ops(tmp_path / "opt.onnx")  # QLinearMul only
    before, fp32 = _run(model, x), _run(src, x)
    level = np.abs(before).max() / 127
    assert np.abs(y - before).max() <= 2 * level
    assert np.abs(y - fp32).mean() <= 1.02 * np.abs(before - fp32).mean()


def test_compress_writes_them_for_ort_and_leaves_them_for_openvino(tmp_path):
    """quantize_int8 rewrites for ORT's placement and records it; OpenVINO's placement (which fuses
    HardSwish into its convolutions) keeps the ops."""
    src = tmp_path / "fp32.onnx"
    _mobile_block(src)
    calib = Samples({"x": np.random.default_rng(1).uniform(-2, 2, (32, 8, 8, 8)).astype(np.float32)}, None)
    cfg = Int8Config(adaround=False, range_search=False, target_cpu="x86-vnni")
    summary = quantize_int8(src, tmp_path / "ort.onnx", calib, cfg, None)
    assert summary["qlinear_forms"] == {"hard_sigmoid_as_add": 2, "mean_as_global_pool": 1}
    assert not {"HardSigmoid", "ReduceMean"} & _ops(tmp_path / "ort.onnx")
    cfg = Int8Config(adaround=False, range_search=False, target_cpu="x86-vnni", placement="openvino")
    summary = quantize_int8(src, tmp_path / "ov.onnx", calib, cfg, None)
    assert "qlinear_forms" not in summary and "ReduceMean" in _ops(tmp_path / "ov.onnx")


def test_a_divide_after_a_rewritten_hard_sigmoid_is_left(tmp_path):
    """Q/DQ -> HardSigmoid -> Q/DQ -> Div by 2 -> Q/DQ -> Div by 3 -> Q/DQ (written by hand: ORT's
    quantizer leaves a HardSigmoid read only by a Div unquantized): the HardSigmoid's quantizer takes
    the Add's scale, so the first Div does not fold into it (its scale would lose the 1 / alpha); the
    second folds into the quantizer before it, a true pair; the outputs within a level."""

    def qdq(name: str, scale: float, zero: int, x: str) -> list:
        inits.extend(
            [
                numpy_helper.from_array(np.array(scale, np.float32), f"{name}_s"),
                numpy_helper.from_array(np.array(zero, np.uint8), f"{name}_z"),
            ]
        )
        return [
            helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"]),
            helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"], [f"{name}_d"]),
        ]

    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("two", 2), ("three", 3))]
    nodes = [
        *qdq("in", 0.05, 128, "x"),
        helper.make_node("HardSigmoid", ["in_d"], ["h"], alpha=1 / 6, beta=0.5),
        *qdq("gate", 1 / 255, 0, "h"),
        helper.make_node("Div", ["gate_d", "two"], ["half"]),
        *qdq("mid", 0.5 / 255, 0, "half"),
        helper.make_node("Div", ["mid_d", "three"], ["sixth"]),
        *qdq("out", 0.5 / 765, 0, "sixth"),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, 8])
    y_info = helper.make_tensor_value_info("out_d", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "gate", [x_info], [y_info], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "qdq.onnx"))
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    forms = {"hard_sigmoid_as_add": 1, "scalar_divide_folded": 1}
    assert qlinear_forms.rewrite(tmp_path / "rewritten.onnx") == forms
    x = np.random.default_rng(1).uniform(-5, 5, (4, 8, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(str(tmp_path / "qdq.onnx"), providers=["CPUExecutionProvider"])
    before = session.run(None, {"x": x})[0]
    assert np.abs(_run_output(tmp_path / "rewritten.onnx", x) - before).max() <= 0.5 / 765 + 1e-7


def test_the_summary_counts_the_quantizers_the_model_has_after_a_fold(tmp_path):
    """A folded Div takes its quantizer with it: the summary's qdq_pairs is the written model's count."""
    src = tmp_path / "fp32.onnx"
    _mobile_block(src, "Div")
    calib = Samples({"x": np.random.default_rng(1).uniform(-2, 2, (32, 8, 8, 8)).astype(np.float32)}, None)
    cfg = Int8Config(adaround=False, range_search=False, target_cpu="x86-vnni")
    summary = quantize_int8(src, tmp_path / "ort.onnx", calib, cfg, None)
    assert summary["qlinear_forms"]["scalar_divide_folded"] == 1
    written = onnx.load(str(tmp_path / "ort.onnx")).graph.node
    assert summary["qdq_pairs"] == sum(n.op_type == "QuantizeLinear" for n in written)


def _classifier(path, flatten: str) -> None:
    """x [N, 8, 8, 8] -> 1x1 Conv -> Relu -> ReduceMean over H, W kept -> FLATTEN (Reshape, Flatten
    or Squeeze) -> Gemm -> y: a CNN classifier's head as torch's exporter writes adaptive pooling."""
    rng = np.random.default_rng(0)
    inits = [
        *_conv("w0", 8, 16, rng),
        numpy_helper.from_array((rng.standard_normal((10, 16)) / 4).astype(np.float32), "fc"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "fc_b"),
        numpy_helper.from_array(np.array([0, -1], np.int64), "flat"),
        numpy_helper.from_array(np.array([2, 3], np.int64), "hw"),
    ]
    second = {"Reshape": ["m", "flat"], "Flatten": ["m"], "Squeeze": ["m", "hw"]}[flatten]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "w0_b"], ["c0"], name="conv"),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("ReduceMean", ["r0"], ["m"], axes=[2, 3], keepdims=1),
        helper.make_node(flatten, second, ["v"]),
        helper.make_node("Gemm", ["v", "fc", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 8, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "head", [x_info], [y_info], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize("flatten", ["Reshape", "Flatten", "Squeeze"])
def test_a_classifiers_pooling_runs_in_int8_before_its_flattening(tmp_path, flatten):
    """ReduceMean -> Reshape -> Q (ORT's quantizer leaves the mean float: only the Gemm's input is
    quantized): the mean becomes a GlobalAveragePool quantized to the Gemm input's levels before the
    reshape, which then moves bytes; in ORT's optimized graph a QLinearGlobalAveragePool where a
    DequantizeLinear and a float ReduceMean were; the outputs within one level of the Gemm's input
    of the model as ORT's quantizer wrote it; compress's summary counts the quantizer it added."""
    src, model, rewritten = tmp_path / "fp32.onnx", tmp_path / "int8.onnx", tmp_path / "rewritten.onnx"
    _classifier(src, flatten)
    x = np.random.default_rng(1).uniform(-2, 2, (32, 8, 8, 8)).astype(np.float32)
    _ort_quantized(src, model, rewritten, x)
    assert qlinear_forms.rewrite(rewritten) == {"mean_as_global_pool": 1, "quantized_before_reshape": 1}
    before, y = _run(model, x, tmp_path / "opt0.onnx"), _run(rewritten, x, tmp_path / "opt.onnx")
    ops = [[n.op_type for n in onnx.load(str(tmp_path / p)).graph.node] for p in ("opt0.onnx", "opt.onnx")]
    assert "ReduceMean" in ops[0] and "ReduceMean" not in ops[1] and "QLinearGlobalAveragePool" in ops[1]
    assert ops[1].count("DequantizeLinear") == ops[0].count("DequantizeLinear") - 1
    m, fp32 = onnx.load(str(rewritten)), onnx.load(str(src))
    inits = {i.name: numpy_helper.to_array(i) for g in (m, fp32) for i in g.graph.initializer}
    gemm_in = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "m")
    level = float(inits[gemm_in.input[1]]) * np.abs(inits["fc"]).sum(1).max() * 1.01  # one level in
    assert np.abs(y - before).max() <= level
    calib = Samples({"x": x}, None)
    cfg = Int8Config(adaround=False, range_search=False, target_cpu="x86-vnni")
    summary = quantize_int8(src, tmp_path / "compressed.onnx", calib, cfg, None)
    assert summary["qlinear_forms"] == {"mean_as_global_pool": 1, "quantized_before_reshape": 1}
    written = onnx.load(str(tmp_path / "compressed.onnx")).graph.node
    assert summary["qdq_pairs"] == sum(n.op_type == "QuantizeLinear" for n in written)
