"""INT8 for OpenVINO (`--target openvino`): Q/DQ on the inputs of convolutions and matrix products
only, as NNCF places its FakeQuantize, and HardSwish kept whole (ORT's pre-processing splits it into
HardSigmoid and Mul, which OpenVINO does not fuse into the convolution before it)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress import activation_islands
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _hard_swish_net(path, opset: int = 17):
    """x -> Conv -> HardSwish (at opset 14 and up; else its HardSigmoid and Mul) -> depthwise Conv
    -> Add(residual) -> Relu -> Conv -> y."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 1, 3, 3)).astype(np.float32), "wd"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c"], "conv1", pads=[1, 1, 1, 1]),
        *(
            [helper.make_node("HardSwish", ["c"], ["h"], "hswish")]
            if opset >= 14
            else [
                helper.make_node("HardSigmoid", ["c"], ["g"], "hsig", alpha=1 / 6, beta=0.5),
                helper.make_node("Mul", ["c", "g"], ["h"], "hmul"),
            ]
        ),
        helper.make_node("Conv", ["h", "wd"], ["d"], "dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Add", ["d", "h"], ["s"], "residual"),
        helper.make_node("Relu", ["s"], ["r"], "relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], "conv2"),
    ]
    save_onnx(
        path,
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
        inits,
        opset=opset,
    )
    return path


def _split(path, alpha: float = 1 / 6, readers: int = 1):
    """PATH's HardSwish written as ORT's pre-processing writes it: x * HardSigmoid(x)."""
    model = onnx.load(str(path))
    nodes = []
    for n in model.graph.node:
        if n.op_type == "HardSwish":
            nodes.append(helper.make_node("HardSigmoid", [n.input[0]], ["hs"], "hsig", alpha=alpha, beta=0.5))
            nodes.append(helper.make_node("Mul", [n.input[0], "hs"], list(n.output), "hmul"))
            if readers > 1:  # the gate read elsewhere too: not a HardSwish
                model.graph.output.append(helper.make_tensor_value_info("hs", TensorProto.FLOAT, None))
        else:
            nodes.append(n)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(path))
    return path


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_a_split_hard_swish_is_joined_again_and_computes_the_same(tmp_path):
    x = np.random.default_rng(1).normal(0, 1, (2, 3, 16, 16)).astype(np.float32)
    whole = _hard_swish_net(tmp_path / "whole.onnx")
    split = _split(_hard_swish_net(tmp_path / "split.onnx"))
    assert activation_islands.join_hard_swish(split) == 1
    ops = [n.op_type for n in onnx.load(str(split)).graph.node]
    assert "HardSwish" in ops and "HardSigmoid" not in ops
    np.testing.assert_allclose(_run(split, x), _run(whole, x), rtol=1e-5, atol=1e-5)
    # not a HardSwish: another slope, a gate read elsewhere; and no HardSwish before opset 14
    for path in (
        _split(_hard_swish_net(tmp_path / "a.onnx"), alpha=0.2),
        _split(_hard_swish_net(tmp_path / "b.onnx"), readers=2),
        _hard_swish_net(tmp_path / "c.onnx", opset=13),
    ):
        before = path.read_bytes()
        assert activation_islands.join_hard_swish(path) == 0 and path.read_bytes() == before


def test_openvino_placement_quantizes_layer_inputs_only(tmp_path):
    """Each activation quantized is a convolution's input (the residual Add reads the same
    dequantized tensor), none is a layer's output: the HardSwish, the residual Add and the Relu
    read and write float; the model stays as close to fp32 as in ORT's placement."""
    import openvino as ov

    fp32 = _hard_swish_net(tmp_path / "fp32.onnx")
    x = np.random.default_rng(2).normal(0, 1, (32, 3, 16, 16)).astype(np.float32)
    base = dict(calibration="minmax", adaround=False, range_search=False, equalize_activations=False)
    for placement in ("openvino", "ort"):
        cfg = Int8Config(**base, placement=placement, fused_activations=False)
        summary = quantize_int8(fp32, tmp_path / f"{placement}.onnx", Samples({"x": x}, None), cfg, None)
        assert summary["quantized_ops"] == {"Conv": 3}
    graph = onnx.load(str(tmp_path / "openvino.onnx")).graph
    readers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    inits = {i.name for i in graph.initializer}
    quantized = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert quantized
    for q in quantized:
        (dq,) = readers[q.output[0]]
        assert "Conv" in {n.op_type for n in readers[dq.output[0]]}
    assert sorted(q.input[0] for q in quantized) == ["h", "r", "x"]  # not c, d, s: layer outputs
    assert "HardSwish" in {n.op_type for n in graph.node}
    compiled = ov.Core().compile_model(str(tmp_path / "openvino.onnx"), "CPU")
    y = {p: _run(tmp_path / f"{p}.onnx", x) for p in ("fp32", "ort")}
    y["openvino"] = compiled({0: x})[0]
    assert sqnr_db(y["fp32"], y["openvino"]) >= sqnr_db(y["fp32"], y["ort"]) - 1.0


def test_compress_for_openvino_records_the_placement_and_builds_without_a_note(edgekit, tmp_path):
    from edgekit.artifact import read_manifest

    fp32 = _hard_swish_net(tmp_path / "fp32.onnx")
    out = tmp_path / "int8"
    r = edgekit(
        "compress", fp32, "--input-shape", "1,3,16,16", "--int8", "--target", "openvino",
        "--calib", "random", "--calib-size", "16", "-o", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    (int8,) = [p for p in read_manifest(out).passes if p.name == "int8"]
    assert int8.config["placement"] == "openvino" and not int8.config["fused_activations"]
    r = edgekit("build", out, "--target", "openvino", "-o", tmp_path / "ov")
    assert r.returncode == 0, r.stderr
    assert "placed for ONNX Runtime" not in r.stderr
