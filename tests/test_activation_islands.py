"""Gated activations spelled out as elementwise ops (edgekit.compress.activation_islands): found
however the exporter ordered them, identified by what they compute, and in an INT8 model for ONNX
Runtime written as its fused op, in float (ORT's own fusion does not fire once Q/DQ surround them)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import save_onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress import activation_islands
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples


def _const(name: str, value: float):
    return numpy_helper.from_array(np.array(value, np.float32), name)


# each form as an exporter writes it: (nodes from "c" to "a", constants, the ORT op it is)
FORMS = {
    "gelu_paddle": (  # x * (1 + erf(x / sqrt 2)), then * 0.5 (paddle2onnx)
        [
            helper.make_node("Div", ["c", "sqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["p"]),
            helper.make_node("Mul", ["c", "p"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["a"]),
        ],
        [_const("sqrt2", np.sqrt(2)), _const("one", 1.0), _const("half", 0.5)],
        "Gelu",
    ),
    "gelu_torch": (  # 0.5 * x first, erf(x * 1/sqrt 2) (torch's legacy exporter)
        [
            helper.make_node("Mul", ["c", "half"], ["h"]),
            helper.make_node("Mul", ["c", "rsqrt2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["one", "e"], ["p"]),
            helper.make_node("Mul", ["h", "p"], ["a"]),
        ],
        [_const("rsqrt2", 1 / np.sqrt(2)), _const("one", 1.0), _const("half", 0.5)],
        "Gelu",
    ),
    "gelu_tanh": (
        [
            helper.make_node("Pow", ["c", "three"], ["c3"]),
            helper.make_node("Mul", ["c3", "k"], ["c3k"]),
            helper.make_node("Add", ["c", "c3k"], ["s"]),
            helper.make_node("Mul", ["s", "sqrt2pi"], ["t0"]),
            helper.make_node("Tanh", ["t0"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["p"]),
            helper.make_node("Mul", ["c", "p"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["a"]),
        ],
        [
            _const("three", 3.0),
            _const("k", 0.044715),
            _const("sqrt2pi", np.sqrt(2 / np.pi)),
            _const("one", 1.0),
            _const("half", 0.5),
        ],
        "FastGelu",
    ),
    "silu": (
        [helper.make_node("Sigmoid", ["c"], ["s"]), helper.make_node("Mul", ["c", "s"], ["a"])],
        [],
        "QuickGelu",
    ),
    "hardswish": (  # x * clip(x + 3, 0, 6) / 6 (PaddleOCR's classifier): ORT has no fused op
        [
            helper.make_node("Add", ["c", "three"], ["s"]),
            helper.make_node("Clip", ["s", "zero", "six"], ["r"]),
            helper.make_node("Mul", ["c", "r"], ["m"]),
            helper.make_node("Div", ["m", "six"], ["a"]),
        ],
        [_const("three", 3.0), _const("zero", 0.0), _const("six", 6.0)],
        None,
    ),
}


def _block(path, form: str, se: bool = False):
    """x -> Conv -> the activation FORM -> Conv -> y; with SE, the activation's output is also
    scaled by a sigmoid of its pooled channels (a Mul that is not part of any activation)."""
    rng = np.random.default_rng(0)
    nodes, consts, _ = FORMS[form]
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.3, 16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (8, 16, 1, 1)).astype(np.float32), "w2"),
        *consts,
    ]
    tail = [helper.make_node("Conv", ["a", "w2"], ["y"], "conv2")]
    if se:
        inits.append(numpy_helper.from_array(rng.normal(0, 0.3, (16, 16, 1, 1)).astype(np.float32), "wse"))
        tail = [
            helper.make_node("GlobalAveragePool", ["a"], ["g"], "pool"),
            helper.make_node("Conv", ["g", "wse"], ["gs"], "se_conv"),
            helper.make_node("Sigmoid", ["gs"], ["gate"], "se_sigmoid"),
            helper.make_node("Mul", ["a", "gate"], ["scaled"], "se_mul"),
            helper.make_node("Conv", ["scaled", "w2"], ["y"], "conv2"),
        ]
    save_onnx(
        path,
        [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], "conv1", pads=[1, 1, 1, 1]), *nodes, *tail],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 16, 16])],
        inits,
    )
    return path


@pytest.mark.parametrize("form", sorted(FORMS))
def test_each_form_is_one_island_identified_by_what_it_computes(tmp_path, form):
    model = onnx.load(str(_block(tmp_path / "m.onnx", form, se=True)))
    found = activation_islands.islands(model.graph)
    assert len(found) == 1  # the SE gate's Mul reads a Conv's output: not an activation
    island = found[0]
    assert island.input == "c" and island.output == "a"
    assert [model.graph.node[k] for k in island.nodes] == list(FORMS[form][0])
    fusable = activation_islands.fusable(model, ["Conv"])
    assert len(fusable) == (FORMS[form][2] is not None)
    # one whose every op ORT's quantizer takes is left to it (its INT8 Sigmoid and Mul)
    left = activation_islands.fusable(model, ["Conv", "Sigmoid", "Mul"])
    assert len(left) == (FORMS[form][2] not in (None, "QuickGelu"))


def test_a_per_channel_affine_is_not_an_activation(tmp_path):
    """x * (x * s_c + b_c) reads x twice from elementwise ops, but computes no one function."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Mul", ["x", "s"], ["xs"]),
        helper.make_node("Add", ["xs", "b"], ["z"]),
        helper.make_node("Mul", ["x", "z"], ["y"]),
    ]
    inits = [
        numpy_helper.from_array(rng.normal(1, 0.2, (4, 1, 1)).astype(np.float32), "s"),
        numpy_helper.from_array(rng.normal(0, 0.2, (4, 1, 1)).astype(np.float32), "b"),
    ]
    save_onnx(
        tmp_path / "m.onnx",
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        inits,
    )
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert len(activation_islands.islands(model.graph)) == 1
    assert activation_islands.fusable(model, ["Conv"]) == []


def _outputs(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("form", ["gelu_paddle", "gelu_tanh"])
def test_int8_writes_the_activation_as_orts_fused_op_in_float(tmp_path, form):
    """The INT8 model computes the activation as ORT's one op on the dequantized conv output: no
    Q/DQ inside it, outputs at least as close to fp32's as with the activation quantized op by op;
    off, ORT's quantizer takes its ops one by one."""
    fp32 = _block(tmp_path / "fp32.onnx", form)
    x = np.random.default_rng(1).uniform(0, 1, (32, 3, 16, 16)).astype(np.float32)
    base = dict(calibration="minmax", adaround=False, range_search=False, equalize_activations=False)
    done = {}
    for on in (True, False):
        out = tmp_path / f"int8_{on}.onnx"
        done[on] = quantize_int8(
            fp32, out, Samples({"x": x}, None), Int8Config(**base, fused_activations=on), None
        )
    op = FORMS[form][2]
    assert done[True]["fused_activations"] == {op: 1} and "fused_activations" not in done[False]
    fused = onnx.load(str(tmp_path / "int8_True.onnx")).graph
    node = next(n for n in fused.node if n.op_type == op)
    assert node.domain == "com.microsoft"
    producer = {o: n for n in fused.node for o in n.output}
    assert producer[node.input[0]].op_type == "DequantizeLinear"
    assert {n.op_type for n in fused.node if node.output[0] in n.input} == {"QuantizeLinear"}
    assert not {"Erf", "Tanh"} & {n.op_type for n in fused.node}
    read = {i for n in fused.node for i in n.input}
    assert all(i.name in read for i in fused.initializer)  # ORT warns at each load about one read by none
    y = {p: _outputs(tmp_path / f"{p}.onnx", x) for p in ("fp32", "int8_True", "int8_False")}
    assert sqnr_db(y["fp32"], y["int8_True"]) >= sqnr_db(y["fp32"], y["int8_False"]) - 0.1


def test_tensorrts_form_writes_no_ort_contrib_op(tmp_path):
    """TensorRT's ONNX parser reads no com.microsoft op: its form leaves the GELU as standard ops."""
    fp32 = _block(tmp_path / "fp32.onnx", "gelu_paddle")
    x = np.random.default_rng(1).uniform(0, 1, (16, 3, 16, 16)).astype(np.float32)
    cfg = Int8Config.tensorrt(calibration="minmax", adaround=False, range_search=False)
    summary = quantize_int8(fp32, tmp_path / "int8.onnx", Samples({"x": x}, None), cfg, None)
    assert "fused_activations" not in summary
    graph = onnx.load(str(tmp_path / "int8.onnx")).graph
    assert not [n for n in graph.node if n.domain == "com.microsoft"]
    assert "Erf" in {n.op_type for n in graph.node}


def test_islands_alike_are_run_once(tmp_path):
    """Three GELUs written alike under their own names (a network's 13, or the same ones at each
    write of a mixed-precision search) are identified from one run of the island."""
    nodes, consts, _ = FORMS["gelu_paddle"]
    chain = []
    for k in range(3):
        rename = {"c": f"x{k}", "a": f"a{k}"}
        for n in nodes:
            ins, outs = (
                [rename.get(i, f"{i}{k}") for i in n.input],
                [rename.get(o, f"{o}{k}") for o in n.output],
            )
            chain.append(helper.make_node(n.op_type, ins, outs))
    inits = [_const(f"{c.name}{k}", float(numpy_helper.to_array(c))) for k in range(3) for c in consts]
    graph = helper.make_graph(
        chain, "g", [helper.make_tensor_value_info(f"x{k}", TensorProto.FLOAT, [4]) for k in range(3)],
        [helper.make_tensor_value_info(f"a{k}", TensorProto.FLOAT, [4]) for k in range(3)], inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    found = activation_islands.islands(model.graph)
    assert len(found) == 3
    activation_islands._run.cache_clear()
    assert [activation_islands._identify(model.graph, i, 17)[0] for i in found] == ["Gelu"] * 3
    assert activation_islands._run.cache_info().misses == 1
