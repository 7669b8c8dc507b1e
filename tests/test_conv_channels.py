"""INT8 convolutions' input channels padded to a multiple of 4 (edgekit.compress.conv_channels)."""

import dataclasses

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

from edgekit import speedup
from edgekit.compress import conv_channels, qlinear_forms
from edgekit.compress.quantize import Int8Config, calibrated, quantize_int8
from edgekit.data import Samples
from edgekit.target_cpu import here


def _net(path, stem_out: int = 16, k: int = 3):
    """x [N, 3, 16, 16] -> 3x3 stride-2 Conv (3 -> STEM_OUT) + Relu -> depthwise KxK Conv + Relu ->
    1x1 Conv (STEM_OUT -> 20): a CNN's stem and a depthwise-separable block."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((stem_out, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.standard_normal(stem_out).astype(np.float32), "b0"),
        numpy_helper.from_array(rng.standard_normal((stem_out, 1, k, k)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(stem_out).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((20, stem_out, 1, 1)).astype(np.float32), "w2"),
    ]
    dw_pads = [k // 2] * 4
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="dw", pads=dw_pads, group=stem_out),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["y"], name="pw"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 16, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "cnn", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


class _Reader(CalibrationDataReader):
    def __init__(self, x):
        self.items = iter([{"x": x[i : i + 1]} for i in range(len(x))])

    def get_next(self):
        return next(self.items, None)


def _quantized(tmp_path, stem_out: int = 16, k: int = 3):
    """The net in edgekit's default INT8 form (u8 activations, s8 symmetric per-channel weights), the
    weights at 7 bits: no 16-bit pair sum saturates on a CPU without VNNI, where the padded kernel
    and the unpadded one pair other products and would saturate differently."""
    src, out = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _net(src, stem_out, k)
    x = np.random.default_rng(1).uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)
    quantize_static(
        str(src), str(out), _Reader(x), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
    )  # fmt: skip
    return out, x


def _padded_graph(tmp_path, nodes: list, inits: list, channels: int, forms: dict | None = None):
    """NODES (reading x [N, CHANNELS, 8, 8], writing y) quantized as _quantized does (its elementwise
    ops then rewritten as compress does for ORT where FORMS, the counts expected, is given), that
    model padded (one convolution), and its inputs."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, channels, 8, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "net", [x_info], [y_info], inits)
    src, model = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    x = np.random.default_rng(1).uniform(-1, 1, (16, channels, 8, 8)).astype(np.float32)
    quantize_static(
        str(src), str(model), _Reader(x), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
    )  # fmt: skip
    if forms is not None:
        assert qlinear_forms.rewrite(model) == forms
    assert conv_channels.pad(model, tmp_path / "padded.onnx") == 1
    return model, tmp_path / "padded.onnx", x


def _read(path):
    """(the graph at PATH, its int8 weights by Conv name, its initializers, each tensor's producer)."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    weights = {n.name: inits[producer[n.input[1]].input[0]] for n in graph.node if n.op_type == "Conv"}
    return graph, weights, inits, producer


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_stem_reads_four_channels_and_computes_the_same_bit_for_bit(tmp_path):
    model, x = _quantized(tmp_path)
    padded = tmp_path / "padded.onnx"
    assert conv_channels.pad(model, padded) == 1  # the stem only: the depthwise and 1x1 convs read 16
    graph, _, inits, producer = _read(padded)
    stem = next(n for n in graph.node if n.name == "stem")
    w = inits[producer[stem.input[1]].input[0]]
    assert w.shape == (16, 4, 3, 3) and not w[:, 3].any()  # a zero weight for the added channel
    step = producer[producer[stem.input[0]].input[0]]
    assert step.op_type == "Pad"
    x_zero = inits[producer[stem.input[0]].input[2]]
    assert inits[step.input[2]] == x_zero  # filled with the zero point: dequantized, exactly 0
    np.testing.assert_array_equal(_run(padded, x), _run(model, x))


def _group(node) -> int:
    return helper.get_attribute_value(next(a for a in node.attribute if a.name == "group"))


def test_a_depthwise_convolution_between_convolutions_gets_16_channels_from_their_weights(tmp_path):
    """24 depthwise channels (not a multiple of 16: ORT's generic kernel, 2.7-3x slower) -> 32 with no
    op added: the convolution writing its input gets zero filters (zero bias), it gets zero filters
    and a group of 32, the 1x1 convolution reading it zero weight rows; outputs bit for bit."""
    model, x = _quantized(tmp_path, stem_out=24, k=5)
    padded = tmp_path / "padded.onnx"
    assert conv_channels.pad(model, padded) == 2  # the stem (3 input channels) and the depthwise conv
    graph, weights, inits, producer = _read(padded)
    assert weights["stem"].shape == (32, 4, 3, 3) and not weights["stem"][24:].any()
    assert weights["dw"].shape == (32, 1, 5, 5) and not weights["dw"][24:].any() and weights["dw"][:24].any()
    assert weights["pw"].shape == (20, 32, 1, 1) and not weights["pw"][:, 24:].any()
    dw = next(n for n in graph.node if n.name == "dw")
    assert _group(dw) == 32 and not inits[producer[dw.input[2]].input[0]][24:].any()  # the int32 bias
    ops = [n.op_type for n in graph.node]
    assert ops.count("Pad") == 1 and "Slice" not in ops  # the stem's Pad only
    np.testing.assert_array_equal(_run(padded, x), _run(model, x))


def test_the_widening_runs_through_a_hardswish_written_as_x_times_hardsigmoid_x(tmp_path):
    """torch's exporter writes Hardswish as Mul(x, HardSigmoid(x)): an added channel stays a channel
    of its own through it (HardSigmoid(0) is not 0, but the zero weights cancel what it holds), so
    neither side of the depthwise convolution needs a Pad or a Slice; bit for bit."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((24, 16, 1, 1)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b0"),
        numpy_helper.from_array(rng.standard_normal((24, 1, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((8, 24, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="expand"),
        helper.make_node("HardSigmoid", ["c0"], ["g0"], alpha=1 / 6),
        helper.make_node("Mul", ["c0", "g0"], ["h0"]),
        helper.make_node("Conv", ["h0", "w1"], ["c1"], name="dw", pads=[1, 1, 1, 1], group=24),
        helper.make_node("HardSigmoid", ["c1"], ["g1"], alpha=1 / 6),
        helper.make_node("Mul", ["c1", "g1"], ["h1"]),
        helper.make_node("Conv", ["h1", "w2"], ["y"], name="project"),
    ]
    model, padded, x = _padded_graph(tmp_path, nodes, inits, 16)
    graph, weights, _, _ = _read(padded)
    assert weights["expand"].shape == (32, 16, 1, 1) and not weights["expand"][24:].any()
    assert weights["project"].shape == (8, 32, 1, 1) and not weights["project"][:, 24:].any()
    assert not {"Pad", "Slice"} & {n.op_type for n in graph.node}
    np.testing.assert_array_equal(_run(padded, x), _run(model, x))


@pytest.mark.parametrize("forms", [None, {"hard_sigmoid_as_add": 1, "mean_as_global_pool": 1}])
def test_the_widening_runs_through_a_squeeze_and_excitation_gate(tmp_path, forms):
    """A depthwise output pooled over its positions into a 1x1 Conv, and multiplied by a gate that
    another 1x1 Conv writes (MobileNetV3's and PP-LCNet's squeeze-and-excitation): the pooling keeps
    the channels, the gate's Conv gets zero filters too; no Pad, no Slice, bit for bit. So too where
    the pooling is a GlobalAveragePool and the gate's HardSigmoid an Add of 3 (qlinear_forms)."""
    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)

    inits = [weight("w0", 24, 16, 1, 1), weight("w1", 24, 1, 3, 3), weight("w2", 8, 24, 1, 1)]
    inits += [weight("w3", 24, 8, 1, 1), weight("b3", 24), weight("w4", 8, 24, 1, 1)]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["c0"], name="expand"),
        helper.make_node("Relu", ["c0"], ["r0"]),
        helper.make_node("Conv", ["r0", "w1"], ["c1"], name="dw", pads=[1, 1, 1, 1], group=24),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("ReduceMean", ["r1"], ["s0"], axes=[2, 3], keepdims=1),
        helper.make_node("Conv", ["s0", "w2"], ["s1"], name="squeeze"),
        helper.make_node("Relu", ["s1"], ["s2"]),
        helper.make_node("Conv", ["s2", "w3", "b3"], ["s3"], name="excite"),
        helper.make_node("HardSigmoid", ["s3"], ["gate"], alpha=1 / 6),
        helper.make_node("Mul", ["r1", "gate"], ["m"]),
        helper.make_node("Conv", ["m", "w4"], ["y"], name="project"),
    ]
    model, padded, x = _padded_graph(tmp_path, nodes, inits, 16, forms)
    graph, weights, _, _ = _read(padded)
    assert weights["expand"].shape[0] == weights["excite"].shape[0] == 32
    assert weights["squeeze"].shape[1] == weights["project"].shape[1] == 32
    assert not {"Pad", "Slice"} & {n.op_type for n in graph.node}
    np.testing.assert_array_equal(_run(padded, x), _run(model, x))


def test_a_depthwise_convolution_read_by_an_add_is_padded_and_sliced_back(tmp_path):
    """Where the channels come from no convolution (a graph input) and go on to an Add: the quantized
    input padded with its zero point, the quantized output sliced back to 24 channels; bit for bit."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((24, 1, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(24).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="dw", pads=[1, 1, 1, 1], group=24),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Add", ["r", "r"], ["y"]),
    ]
    model, padded, x = _padded_graph(tmp_path, nodes, inits, 24)
    graph, _, inits, producer = _read(padded)
    dw = next(n for n in graph.node if n.name == "dw")
    assert _group(dw) == 32 and producer[producer[dw.input[0]].input[0]].op_type == "Pad"
    (q,) = [n for n in graph.node if dw.output[0] in n.input]
    (cut,) = [n for n in graph.node if q.output[0] in n.input]
    assert cut.op_type == "Slice" and list(inits[cut.input[2]]) == [24]
    np.testing.assert_array_equal(_run(padded, x), _run(model, x))


def test_convolutions_ort_would_not_run_on_its_symmetric_kernel_stay(tmp_path):
    model, _ = _quantized(tmp_path, stem_out=12)  # fewer than 16 output channels
    assert conv_channels.pad(model, tmp_path / "padded.onnx") == 0
    assert not (tmp_path / "padded.onnx").exists()
    model, _ = _quantized(tmp_path, stem_out=32)  # 32 depthwise channels: a multiple of 16 already
    assert conv_channels.pad(model, tmp_path / "padded.onnx") == 1  # the stem only
    dw = next(n for n in onnx.load(str(tmp_path / "padded.onnx")).graph.node if n.name == "dw")
    assert _group(dw) == 32


def test_int8_pads_for_the_cpus_whose_ort_has_the_kernel_only(tmp_path):
    """Padded where ORT has the kernel; timed against the unpadded model on the target class's
    kernels where they can be timed here (this CPU's class, or a lesser one it shows with CPUID
    masked) and kept only where faster; elsewhere (a class above this CPU's) padded unmeasured."""
    _net(tmp_path / "fp32.onnx")
    calib = Samples({"x": np.random.default_rng(1).uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)}, None)
    quick = dict(adaround=False, range_search=False)
    for cpu in ("x86-amx", "x86-vnni", "x86-avx2", "arm64-dotprod"):
        out = tmp_path / f"{cpu}.onnx"
        summary = quantize_int8(tmp_path / "fp32.onnx", out, calib, Int8Config(target_cpu=cpu, **quick), None)
        record = summary.get("conv_input_channels_padded")
        if cpu not in conv_channels.CLASSES:
            assert record is None, cpu
            continue
        assert record["padded"] == 1, cpu
        if speedup.kernels(cpu) is not None:
            assert record["kept"] == (record["time_vs_unpadded"] < 1)
        else:
            assert record == {"padded": 1, "kept": True}
        graph = onnx.load(str(out)).graph
        assert ("Pad" in {n.op_type for n in graph.node}) == record["kept"]
    # what --target openvino and TensorRT's form set
    no = Int8Config(target_cpu="x86-vnni", pad_conv_channels=False, **quick)
    summary = quantize_int8(tmp_path / "fp32.onnx", tmp_path / "ov.onnx", calib, no, None)
    assert "conv_input_channels_padded" not in summary


def test_later_writes_follow_the_first_writes_choice(tmp_path):
    """Mixed-precision trials (and Ray workers) write from one calibration: the first write decides
    whether to pad; the others pad the same way, untimed."""
    _net(tmp_path / "fp32.onnx")
    calib = Samples({"x": np.random.default_rng(1).uniform(-1, 1, (16, 3, 16, 16)).astype(np.float32)}, None)
    cfg = Int8Config(
        target_cpu="x86-vnni" if here().cpu_class != "x86-vnni" else "x86-amx", range_search=False
    )
    with calibrated(tmp_path / "fp32.onnx", calib, cfg, None) as write:
        first = write(tmp_path / "a.onnx", ())
        later = write(tmp_path / "b.onnx", ["pw"])  # a trial: the 1x1 conv left fp32
        packed = write.prepared()
    kept = first["conv_input_channels_padded"]["kept"]  # timed where this CPU can time that class
    assert later.get("conv_input_channels_padded") == (
        {"padded": 1, "kept": True} if kept else None
    )  # untimed
    assert packed.pad_channels is kept
    with calibrated(
        tmp_path / "fp32.onnx", calib, cfg, None, prepared=dataclasses.replace(packed, pad_channels=not kept)
    ) as write:
        assert ("conv_input_channels_padded" in write(tmp_path / "c.onnx", ())) == (not kept)
