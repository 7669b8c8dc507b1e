"""`edgekit check`: real ONNX models (onnx.helper, torch exports, edgekit's own INT8 artifacts) against
ONNX Runtime, OpenVINO and the TensorRT-facing ONNX checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from models import resnet_blocks, smooth_images
from onnx import TensorProto, helper
from torch import nn

from edgekit.compress.quantize import Int8Config
from edgekit.errors import EdgekitError
from edgekit.export import check as chk
from edgekit.passes import from_flags
from edgekit.pipeline import CompressRequest, compress
from edgekit.runtimes import importable

NO_TENSORRT = pytest.mark.skipif(importable("tensorrt"), reason="checks the message given without TensorRT")


# one xdist worker builds the module's fixtures once, instead of each worker its own
pytestmark = pytest.mark.xdist_group("check")


def _graph_model(path: Path, nodes, inputs, outputs, opsets) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 10
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def unsupported(tmp_path_factory) -> Path:
    """Det (no OpenVINO conversion, TensorRT: unsupported), ai.onnx.ml Scaler and a custom-domain op."""
    vi = helper.make_tensor_value_info
    nodes = [
        helper.make_node("Det", ["m"], ["d"], name="det_node"),
        helper.make_node("Scaler", ["x"], ["s"], name="scaler_node", domain="ai.onnx.ml", scale=[2.0]),
        helper.make_node("MyOp", ["x"], ["c"], name="custom_node", domain="edgekit.test"),
    ]
    return _graph_model(
        tmp_path_factory.mktemp("unsupported") / "model.onnx",
        nodes,
        [vi("m", TensorProto.FLOAT, [2, 3, 3]), vi("x", TensorProto.FLOAT, ["batch", 4])],
        [
            vi("d", TensorProto.FLOAT, [2]),
            vi("s", TensorProto.FLOAT, ["batch", 4]),
            vi("c", TensorProto.FLOAT, ["batch", 4]),
        ],
        [("", 20), ("ai.onnx.ml", 3), ("edgekit.test", 1)],
    )


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """The tiny ResNet as a torch.export program, its fp32 artifact and INT8 artifacts in three forms."""
    root = tmp_path_factory.mktemp("tiny")
    module, shapes = resnet_blocks()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(module, (torch.zeros(2, *shapes[0][1:]),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(root / "tiny.pt2"))
    np.savez(root / "calib.npz", x=smooth_images(16, seed=1))
    out = {"pt2": root / "tiny.pt2"}
    plain = {"calibration": "minmax", "adaround": False, "range_search": False}  # the forms are under test
    configs = {
        "fp32": None,
        "asymmetric": Int8Config(**plain),
        "symmetric_u8": Int8Config(**plain, activation_symmetric=True),
        "symmetric_s8": Int8Config(**plain, activation_symmetric=True, activation_type="int8"),
        "tensorrt": Int8Config.tensorrt(**plain),  # what --symmetric-activations makes
    }
    for name, cfg in configs.items():
        out[name] = root / name
        compress(
            CompressRequest(
                model=root / "tiny.pt2",
                out=out[name],
                chain=from_flags(int8=cfg),
                calib=str(root / "calib.npz"),
                calib_size=16,
            )
        )
    return out


class DetHead(nn.Module):
    def forward(self, x):
        return torch.linalg.det(x)


class LinearDet(nn.Module):
    """Exports to MatMul + Add (from `lin`) and Det (from `head`), which OpenVINO cannot convert."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.head = DetHead()

    def forward(self, x):
        return self.head(self.lin(x))


def test_openvino_names_every_node_it_cannot_convert(unsupported):
    found = chk.check(unsupported, "openvino")
    assert {(f.op_type, f.node) for f in found} == {
        ("Det", "det_node"),
        ("ai.onnx.ml:Scaler", "scaler_node"),
        ("edgekit.test:MyOp", "custom_node"),
    }
    assert all("OpenVINO has no conversion" in f.reason for f in found)


def _gate(path: Path) -> None:
    """A torch export's `if score >= t:` on a [1, 1] score (openWakeWord's hey_jarvis): an If whose
    condition has two axes, which ONNX allows (one element) and OpenVINO's frontend refuses."""
    branch = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])]
    then, other = helper.make_node("Neg", ["x"], ["y"]), helper.make_node("Identity", ["x"], ["y"])
    graph = helper.make_graph(
        [
            helper.make_node("GreaterOrEqual", ["x", "t"], ["c"]),
            helper.make_node(
                "If", ["c"], ["out"], "gate",
                then_branch=helper.make_graph([then], "then", [], branch),
                else_branch=helper.make_graph([other], "else", [], branch),
            ),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 1])],
        [onnx.numpy_helper.from_array(np.array(0.5, np.float32), "t")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.skipif(not importable("openvino"), reason="openvino not installed")
def test_openvino_reads_an_if_on_a_two_axis_condition(tmp_path):
    import openvino as ov

    from edgekit.runtimes import ov as ov_runtime

    _gate(tmp_path / "gate.onnx")
    with pytest.raises(RuntimeError, match="Rank of If condition"):
        ov.Core().read_model(str(tmp_path / "gate.onnx"))  # as OpenVINO reads the file itself
    assert chk.check(tmp_path / "gate.onnx", "openvino") == []
    session = ov_runtime.load(str(tmp_path / "gate.onnx"))
    for x, want in ((0.7, -0.7), (0.2, 0.2)):
        (got,) = session.run({"x": np.full((1, 1), x, np.float32)})
        assert got.item() == pytest.approx(want)


def _carried_loop(path: Path) -> None:
    """paddle2onnx's while (SLANet's table decoder): a Loop whose body hands a loop-carried value
    (a weight it reads each step) back as it came in, its body output the body input itself, here
    twice; ONNX and ONNX Runtime allow it, OpenVINO 2026.4's frontend refuses the Loop."""
    f = lambda name, shape=None: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("Identity", ["c"], ["c_out"]), helper.make_node("Add", ["y", "w"], ["y_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c", TensorProto.BOOL, []), f("y"), f("w"), f("w2")],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []), f("y_out"), f("w"), f("w")],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "", "x", "x", "x"], ["y_end", "w_end", "w2_end"], body=body)],
        "g",
        [f("x", [2])],
        [f("y_end", [2])],
        [onnx.numpy_helper.from_array(np.array(3, np.int64), "trips")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.mark.skipif(not importable("openvino"), reason="openvino not installed")
def test_openvino_reads_a_loop_whose_body_hands_an_input_back(tmp_path):
    import openvino as ov

    from edgekit.runtimes import ov as ov_runtime

    _carried_loop(tmp_path / "loop.onnx")
    with pytest.raises(RuntimeError, match="loop body graph canonical inputs size"):
        ov.Core().read_model(str(tmp_path / "loop.onnx"))  # as OpenVINO reads the file itself
    assert chk.check(tmp_path / "loop.onnx", "openvino") == []
    (got,) = ov_runtime.load(str(tmp_path / "loop.onnx")).run({"x": np.array([1, 2], np.float32)})
    assert got.tolist() == [4, 8]  # y = x + 3 steps of x, as ONNX Runtime computes it


def test_openvinos_reason_for_refusing_an_op_it_has_is_kept():
    """read_model's message for an op it has but refuses on this node (Silero VAD's default file)."""
    msg = (
        "Exception from src/inference/src/cpp/core.cpp:84:\nCheck 'false' failed at "
        "src/frontends/common_translators/src/unconverted_ops_report.cpp:151:\nFrontEnd API failed with "
        "OpConversionFailure:\nModel wasn't fully converted. Failed operations detailed log:\n-- Conv-16 "
        "with a message:\nWhile validating ONNX node '<Node(Conv): conv1>':\nThe input data tensor's rank "
        "has to be known (static)\n\nSummary:\n-- Conversion is failed for: Conv-16\n"
    )
    model = helper.make_model(
        helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], "conv1")], "g", [], [])
    )
    (found,) = chk._conversion_findings(model, msg)
    assert found.node == "conv1"
    assert found.reason.endswith("refuses this node: The input data tensor's rank has to be known (static).")


def test_ort_custom_domain_op_without_kernel(unsupported):
    found = chk.check(unsupported, "ort")
    assert [(f.op_type, f.node) for f in found] == [("edgekit.test:MyOp", "custom_node")]
    assert "ONNX Runtime has no operator MyOp" in found[0].reason


def test_ort_names_the_node_it_has_no_kernel_for(tmp_path):
    """ImageDecoder is a standard ONNX op (opset 20) that ONNX Runtime's CPU provider has no kernel for."""
    vi = helper.make_tensor_value_info
    path = _graph_model(
        tmp_path / "m.onnx",
        [helper.make_node("ImageDecoder", ["jpeg"], ["image"], name="decoder")],
        [vi("jpeg", TensorProto.UINT8, [1000])],
        [vi("image", TensorProto.UINT8, [32, 32, 3])],
        [("", 20)],
    )
    found = chk.check(path, "ort")
    assert [(f.op_type, f.node) for f in found] == [("ImageDecoder", "decoder")]
    assert "no kernel" in found[0].reason


def test_opset_finding_for_an_op_newer_than_the_model(tmp_path):
    vi = helper.make_tensor_value_info
    path = tmp_path / "m.onnx"
    graph = helper.make_graph(
        [helper.make_node("Gelu", ["x"], ["y"], name="gelu_node")],
        "g",
        [vi("x", TensorProto.FLOAT, [4])],
        [vi("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))  # onnx.checker rejects it too: a model-level finding
    found = chk.opset_findings(onnx.load(str(path)))
    assert [(f.op_type, f.node) for f in found] == [("Gelu", "gelu_node")]
    assert "exists from opset 20; the model declares opset 17" in found[0].reason


def test_ort_load_error_keeps_its_reason(tmp_path):
    """ORT's source location and C++ signature are dropped, so its reason fits the sentence."""
    path = _graph_model(
        tmp_path / "m.onnx",
        [helper.make_node("Relu", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        [("", 17)],
    )
    model = onnx.load(str(path))
    model.ir_version = 99  # newer than any onnxruntime reads
    onnx.save(model, str(path))
    [found] = [f for f in chk.check(path, "ort") if "ONNX Runtime" in f.reason]  # the checker's is beside it
    assert found.reason.startswith("ONNX Runtime cannot load the model: Unsupported model IR version: 99")
    assert "onnxruntime_src" not in found.reason


def test_module_attribution_from_a_torch_export(tmp_path):
    path = tmp_path / "det.onnx"
    torch.onnx.export(LinearDet().eval(), (torch.zeros(2, 3, 3),), str(path), dynamo=True)
    found = chk.check(path, "openvino")
    assert [(f.op_type, f.module) for f in found] == [("Det", "head (DetHead)")]
    if not importable("tensorrt"):  # the TensorRT graph checks name the module too
        with pytest.raises(chk.ParserUnavailable) as e:
            chk.check(path, "tensorrt")
        assert [(f.op_type, f.module) for f in e.value.findings] == [("Det", "head (DetHead)")]


def test_clean_model_exit_0_for_ort_and_openvino(edgekit, tiny):
    for target in ("ort", "openvino"):
        r = edgekit("check", tiny["fp32"], "--target", target)
        assert r.returncode == 0, r.stderr
        assert "no findings" in r.stdout


def test_torch_model_is_exported_then_checked(edgekit, tiny):
    r = edgekit("check", tiny["pt2"], "--target", "ort")
    assert r.returncode == 0, r.stderr


def test_cli_findings_exit_1_with_the_node(edgekit, unsupported):
    r = edgekit("check", unsupported, "--target", "ort")
    assert r.returncode == 1, r.stderr
    assert "custom_node" in r.stdout and "edgekit.test:MyOp" in r.stdout


@NO_TENSORRT
def test_tensorrt_absent_lists_onnx_findings_then_says_so(edgekit, unsupported):
    r = edgekit("check", unsupported, "--target", "tensorrt")
    assert r.returncode == 2
    assert "det_node" in r.stdout and "custom_node" in r.stdout  # the ONNX-level findings, first
    assert "TensorRT is not installed here, so its parser cannot check the model" in r.stderr
    assert r.stderr.count("\n") == 1  # one sentence, no traceback


@NO_TENSORRT
def test_tensorrt_absent_on_a_clean_model_is_not_a_pass(edgekit, tiny):
    r = edgekit("check", tiny["fp32"], "--target", "tensorrt")
    assert r.returncode == 2
    assert "TensorRT is not installed here" in r.stderr


def test_int8_needs_a_qdq_model(tiny):
    for target in ("ort", "openvino", "tensorrt"):
        found = chk.int8_findings(tiny["fp32"] / "model.onnx", target)
        assert len(found) == 1 and "build an INT8 artifact first" in found[0].reason
    assert "--symmetric-activations" in found[0].reason  # the TensorRT form


def test_int8_asymmetric_zero_points_refused_for_tensorrt(tiny):
    found = chk.int8_findings(tiny["asymmetric"] / "model.onnx", "tensorrt")
    q = [f for f in found if f.op_type == "QuantizeLinear"]
    assert q and all("TensorRT takes int8 with zero point 0 only" in f.reason for f in q)
    assert chk.int8_findings(tiny["asymmetric"] / "model.onnx", "ort") == []  # ORT runs any zero point


def test_int8_symmetric_uint8_is_still_refused_for_tensorrt(tiny):
    """ORT's symmetric uint8 activations have zero point 128: not TensorRT's form either."""
    found = chk.int8_findings(tiny["symmetric_u8"] / "model.onnx", "tensorrt")
    assert any("uint8 (zero point 128)" in f.reason for f in found)


def test_int8_symmetric_int8_leaves_only_the_int32_biases(tiny):
    found = chk.int8_findings(tiny["symmetric_s8"] / "model.onnx", "tensorrt")
    assert found and all(f.op_type == "DequantizeLinear" and "int32" in f.reason for f in found)
    assert not any("zero point" in f.reason for f in found)


def test_the_symmetric_activations_form_is_what_tensorrt_takes(tiny):
    assert chk.int8_findings(tiny["tensorrt"] / "model.onnx", "tensorrt") == []


def test_artifact_directory_is_checked(tiny):
    assert chk.check_model(tiny["symmetric_s8"], "openvino", "int8") == []


def test_fail_fast_names_the_first_findings(unsupported):
    pattern = r"node det_node \(Det\).*\(and 2 more finding\(s\)\).*edgekit check MODEL --target openvino"
    with pytest.raises(EdgekitError, match=pattern):
        chk.fail_fast(unsupported, "openvino")


def test_bad_target_and_precision_are_usage_errors(unsupported, edgekit):
    with pytest.raises(EdgekitError, match="does not apply to ort"):
        chk.check(unsupported, "ort", "bf16")
    r = edgekit("check", unsupported, "--target", "ort", "--precision", "bf16")
    assert r.returncode == 2 and "does not apply to ort" in r.stderr


class _Core:
    """An OpenVINO Core stand-in reporting a CPU's OPTIMIZATION_CAPABILITIES."""

    def __init__(self, caps):
        self.caps = caps

    def get_property(self, device, name):
        return self.caps


def test_cpu_precision_findings():
    assert "runs bf16 in f32" in chk._cpu_precision(_Core(["FP32", "INT8"]), "bf16")[0].reason
    assert "in bf16" in chk._cpu_precision(_Core(["FP32", "BF16"]), "fp16")[0].reason
    assert chk._cpu_precision(_Core(["FP32", "BF16", "FP16"]), "bf16") == []
