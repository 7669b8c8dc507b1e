"""fp16 ONNX and bf16 artifacts (`--fp16`, `--bf16`) of real exported models, verified against fp32.

Measured on the 2-core EPYC of FIELD-NOTES (onnxruntime 1.32, OpenVINO 2026.4): the tiny ResNet's
fp16 artifact has an SQNR of ~68 dB against fp32 (threshold 40 dB), the encoder's ~72 dB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from models import resnet_blocks, smooth_images, transformer

from edgekit.compress.precision import Fp16Config
from edgekit.errors import EdgekitError
from edgekit.passes import Bf16Config, from_flags
from edgekit.pipeline import CompressRequest, compress


def _pt2(module, shape, path: Path) -> Path:
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(module, (torch.zeros(2, *shape[1:]),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return path


@pytest.fixture(scope="module")
def resnet(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("precision")
    module, shapes = resnet_blocks()
    np.savez(root / "calib.npz", x=smooth_images(32, seed=1))
    model = _pt2(module, shapes[0], root / "tiny.pt2")
    compress(CompressRequest(model=model, out=root / "fp32", calib=str(root / "calib.npz")))
    return {"model": model, "calib": root / "calib.npz", "fp32": root / "fp32", "root": root}


def test_fp16_artifact(resnet):
    out = resnet["root"] / "fp16"
    m = compress(
        CompressRequest(
            model=resnet["model"], out=out, chain=from_flags(fp16=Fp16Config()), calib=str(resnet["calib"])
        )
    )
    model = onnx.load(str(out / "model.onnx"))
    weights = [t for t in model.graph.initializer if t.name.endswith("weight")]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)
    io = [*model.graph.input, *model.graph.output]
    assert {v.type.tensor_type.elem_type for v in io} == {onnx.TensorProto.FLOAT}
    v = m.verification["fp16"]
    assert v["fidelity"]["output_0"]["sqnr_db"] > 40 and v["runtime"] == "onnxruntime (CPU)"
    fp32_bytes = (resnet["fp32"] / "model.onnx").stat().st_size
    assert 0.45 < (out / "model.onnx").stat().st_size / fp32_bytes < 0.65  # graph bytes do not halve
    assert m.passes[-1].name == "fp16"


def test_fp16_keeps_blocked_ops_fp32(tmp_path):
    module, shapes = transformer()
    model = _pt2(module, shapes[0], tmp_path / "enc.pt2")
    np.savez(
        tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(16, *shapes[0][1:])).astype("f4")
    )
    m = compress(
        CompressRequest(
            model=model,
            out=tmp_path / "fp16",
            chain=from_flags(fp16=Fp16Config()),
            calib=str(tmp_path / "calib.npz"),
        )
    )
    graph = onnx.load(str(tmp_path / "fp16" / "model.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    fp32_inputs = {i.name for i in graph.input}

    def is_fp32(name: str) -> bool:  # a graph input, a Cast to float, or another blocked op's output
        n = producers.get(name)
        if n is None:
            return name in fp32_inputs
        cast_to_float = n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT
        return cast_to_float or n.op_type in ("LayerNormalization", "Softmax")

    blocked = [n for n in graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert blocked and m.passes[-1].summary["kept_fp32_ops"]
    for n in blocked:
        assert is_fp32(n.input[0]), n.name
    halves = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.FLOAT16}
    assert any(n.op_type == "MatMul" and n.input[1] in halves for n in graph.node)
    assert m.verification["fp16"]["fidelity"]["output_0"]["sqnr_db"] > 40


@pytest.mark.usefixtures("needs_bf16")
def test_bf16_artifact_is_verified_in_openvino_bf16(resnet):
    out = resnet["root"] / "bf16"
    m = compress(
        CompressRequest(
            model=resnet["model"], out=out, chain=from_flags(bf16=Bf16Config()), calib=str(resnet["calib"])
        )
    )
    assert m.inference_precision == "bf16"
    v = m.verification["bf16"]
    assert v["runtime"] == "openvino (CPU), compiled for bf16"
    assert 0 < v["fidelity"]["output_0"]["sqnr_db"] < float("inf")  # fp32 against itself: inf
    assert (out / "model.onnx").read_bytes() == (resnet["fp32"] / "model.onnx").read_bytes()


def test_bf16_refused_where_it_cannot_run(lacks_bf16, resnet):
    """Only on a machine without bf16 (no AVX-512 BF16 / AMX, or no OpenVINO): refused before any
    work, with bf16_unsupported()'s own sentence, and nothing written."""
    out = resnet["root"] / "no"
    with pytest.raises(EdgekitError) as refused:
        compress(
            CompressRequest(
                model=resnet["model"], out=out, chain=from_flags(bf16=Bf16Config()), calib="random"
            )
        )
    assert str(refused.value) == f"{lacks_bf16}."
    assert not out.exists()


def test_fp16_of_a_model_with_blocked_ops_inside_an_if(tmp_path):
    """Silero VAD's opset-18 file keeps its network in an If branch, Pow and Sqrt among it. ONNX
    Runtime's converter put the Cast before a blocked node in a branch into the main graph, where
    its input does not exist: an invalid model. The main graph's Pow stays fp32, the branch goes
    fp16 (counted), and the model loads and keeps its outputs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(8, 8)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    branch = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["t"]), helper.make_node("Pow", ["t", "two"], ["p"])],
        "then",
        [],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["N", 8])],
        [w, two],
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 8])],
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=other),
        helper.make_node("Pow", ["y", "half"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 8])],
        [cond, numpy_helper.from_array(np.array(0.5, np.float32), "half")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "branchy.onnx")
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(16, 8)).astype(np.float32))
    m = compress(
        CompressRequest(
            model=tmp_path / "branchy.onnx",
            out=tmp_path / "fp16",
            chain=from_flags(fp16=Fp16Config()),
            calib=str(tmp_path / "calib.npz"),
        )
    )
    summary = m.passes[-1].summary
    assert summary["kept_fp32_ops"] == {"Pow": 1} and summary["fp16_in_control_flow"] == {"Pow": 1}
    assert summary["initializers"]["float16"] >= 1  # the branch's weights
    assert m.verification["fp16"]["fidelity"]["output_0"]["sqnr_db"] > 40
