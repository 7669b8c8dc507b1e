"""The output layer refitted to the INT8 model's features (edgekit.compress.output_fit): a classifier's
last Gemm, directly or under a Softmax or a Sigmoid, recovers fp32's outputs from features an
earlier quantizer distorted, on samples neither calibration nor the fit saw; it stays INT8 in its
form (7-bit weights stay 7-bit), is left as it was where the held-out samples do not gain, and a
mixed-precision trial gets the full model's fit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import margin_classifier, pooled_classifier, smooth_images
from onnx import helper, numpy_helper

from edgekit.compress import output_fit, range_search
from edgekit.compress.quantize import Int8Config, calibrated, quantize_int8
from edgekit.data import Samples

# the other algorithms off: the fit's effect alone, in seconds; no channel padding, which is timed
# (two writes of one model may differ by it)
BASE = dict(target_cpu="x86-vnni", adaround=False, range_search=False, pad_conv_channels=False)
CALIB = Samples({"x": smooth_images(160, seed=3)}, None)
HELD = smooth_images(256, seed=11)  # seen by neither calibration nor the fit


def _with(path, out, op: str, name: str, **attrs) -> None:
    """PATH's model with OP (a Softmax over the classes, a Sigmoid, an Identity as paddle2onnx
    writes last, a Cast to float16 as a float16 model's output) over its output as its output NAME,
    saved at OUT."""
    model = onnx.load(str(path))
    model.graph.node.append(helper.make_node(op, [model.graph.output[0].name], [name], **attrs))
    model.graph.output[0].name = name
    if op == "Cast":
        model.graph.output[0].type.tensor_type.elem_type = attrs["to"]
    onnx.save(model, str(out))


def _regrouped(path, out, shape: list[int] | None, name: str = "rows") -> None:
    """PATH's model with its output reshaped to SHAPE (a row per sample, or not; None: the shape of
    its Gemm's output, read by a Shape node as paddle2onnx does), saved at OUT."""
    model = onnx.load(str(path))
    last = model.graph.output[0].name
    if shape is None:
        logits = next(n for n in model.graph.node if n.op_type == "Gemm").output[0]
        model.graph.node.append(helper.make_node("Shape", [logits], [f"{name}_shape"]))
    else:
        model.graph.initializer.append(numpy_helper.from_array(np.array(shape, np.int64), f"{name}_shape"))
    model.graph.node.append(helper.make_node("Reshape", [last, f"{name}_shape"], [name]))
    model.graph.output[0].name = name
    onnx.save(model, str(out))


def _as_matmul(path, out) -> None:
    """PATH's classifier with its Gemm written as a MatMul and an Add of the bias (as tf2onnx writes
    a Dense layer), saved at OUT: the quantizer's pre-processing makes them a Gemm again, whose
    refit the test checks."""
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    k, gemm = next((k, n) for k, n in enumerate(model.graph.node) if n.op_type == "Gemm")
    transposed = any(a.name == "transB" and a.i for a in gemm.attribute)
    w = numpy_helper.to_array(inits[gemm.input[1]])
    model.graph.initializer.append(numpy_helper.from_array(w.T if transposed else w, "dense_kernel"))
    product = helper.make_node("MatMul", [gemm.input[0], "dense_kernel"], ["dense_product"])
    add = helper.make_node("Add", ["dense_product", gemm.input[2]], [gemm.output[0]])
    model.graph.node.remove(gemm)
    model.graph.node.insert(k, add)
    model.graph.node.insert(k, product)
    onnx.save(model, str(out))


def _run(path, x=HELD):
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    return out.astype(np.float64)


def _inits(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fit")
    (root / "export").mkdir()
    shutil.copyfile(pooled_classifier(root / "export"), root / "logits.onnx")
    _with(root / "logits.onnx", root / "probs.onnx", "Softmax", "probs", axis=1)
    _as_matmul(root / "probs.onnx", root / "dense.onnx")
    # paddle2onnx's classifier: Gemm -> Flatten -> Softmax -> Reshape -> Identity
    _with(root / "logits.onnx", root / "flat.onnx", "Flatten", "flat", axis=1)
    _with(root / "flat.onnx", root / "flat_probs.onnx", "Softmax", "flat_probs", axis=-1)
    _regrouped(root / "flat_probs.onnx", root / "reshaped.onnx", None)
    _with(root / "reshaped.onnx", root / "paddle.onnx", "Identity", "scores")
    _with(root / "logits.onnx", root / "sigmoid.onnx", "Sigmoid", "labels")
    _with(root / "logits.onnx", root / "half.onnx", "Cast", "half", to=onnx.TensorProto.FLOAT16)
    margin_classifier(root / "margin.onnx")
    return root


@pytest.mark.parametrize("kind", ["logits", "probs", "dense", "paddle", "sigmoid", "half"])
def test_the_refit_recovers_what_clipped_features_lost(models, kind, tmp_path):
    """The head's input range halved (as the range search may choose for a tensor's tail): the
    pooled features saturate, the outputs drift from fp32's; refitted on the calibration samples, the
    head brings the held-out outputs back within a fifth of that error."""
    fp32, q = models / f"{kind}.onnx", tmp_path / "q.onnx"
    quantize_int8(fp32, q, CALIB, Int8Config(**BASE, output_fit=False), None)
    head = output_fit.heads(onnx.load(str(q)))[0]
    assert head.output == onnx.load(str(fp32)).graph.output[0].name
    assert head.link == {"logits": None, "half": None, "sigmoid": "Sigmoid"}.get(kind, "Softmax")
    producer = {o: n for n in onnx.load(str(q)).graph.node for o in n.output}
    range_search.apply(q, fp32, {producer[head.node.input[0]].input[1]: 0.5})
    judged = range_search.judged_kinds([_run(fp32)], [head.output])
    assert judged == ["classes" if kind in ("logits", "half") else "probabilities"]
    clipped = range_search.output_error([_run(q)], [_run(fp32)], judged)
    fits, record = output_fit.fit(q, fp32, fp32, CALIB, None)
    assert output_fit.apply(q, fits) == 1 and record["layers"][0]["ridge"] in output_fit.RIDGE
    before, after = record["layers"][0]["held_out_error"]
    assert after < 0.5 * before
    assert range_search.output_error([_run(q)], [_run(fp32)], judged) < 0.2 * clipped


@pytest.mark.parametrize("form", ["7-bit", "uint8"])
def test_the_pipeline_refits_and_the_weights_keep_their_form(models, form, tmp_path, monkeypatch):
    """Written by the quantizer (every fit kept): each output channel's weights reach as many levels
    from their zero point as the quantizer's did (ORT's 7-bit weights reach +-64; uint8 ones sit
    around a zero point of 128) in the same integer type, and the bias is int32 at the new weight
    scales times the input's."""
    monkeypatch.setattr(output_fit, "GAIN", 0.0)
    out, off = tmp_path / "on.onnx", tmp_path / "off.onnx"
    cfg = Int8Config(**BASE, **({"reduce_range": "all"} if form == "7-bit" else {"weight_type": "uint8"}))
    summary = quantize_int8(models / "margin.onnx", out, CALIB, cfg, None)
    assert summary["output_fit"]["applied"] == 1 and summary["quantized_ops"]["Gemm"] == 1
    plain = cfg.model_copy(update={"output_fit": False})
    assert "output_fit" not in quantize_int8(models / "margin.onnx", off, CALIB, plain, None)
    model = onnx.load(str(out))
    on_inits, off_inits = _inits(out), _inits(off)
    producer = {o: n for n in model.graph.node for o in n.output}
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    w_dq, b_dq, x_dq = (producer[gemm.input[k]] for k in (1, 2, 0))
    scale, zero = on_inits[w_dq.input[1]], on_inits[w_dq.input[2]]
    assert scale.shape == (10,) and np.array_equal(zero, off_inits[w_dq.input[2]])
    levels, written = (i[w_dq.input[0]] for i in (on_inits, off_inits))
    assert levels.dtype == written.dtype == (np.int8 if form == "7-bit" else np.uint8)
    reach = [np.abs(q.astype(np.int32) - zero[:, None]).max(1) for q in (levels, written)]
    assert np.array_equal(*reach) and reach[0].max() <= (64 if form == "7-bit" else 128)
    assert on_inits[b_dq.input[0]].dtype == np.int32
    assert not np.array_equal(on_inits[b_dq.input[0]], off_inits[b_dq.input[0]])  # refitted
    np.testing.assert_allclose(on_inits[b_dq.input[1]], scale * on_inits[x_dq.input[1]], rtol=1e-6)


def test_a_head_that_does_not_gain_enough_is_left_as_it_was(models, tmp_path, monkeypatch):
    """Where no ridge strength lowers the held-out error by GAIN (here: all of it), the layer keeps
    the weights the quantizer wrote, and the record says what the best fit would have reached."""
    monkeypatch.setattr(output_fit, "GAIN", 1.0)
    on, off = tmp_path / "on.onnx", tmp_path / "off.onnx"
    record = quantize_int8(models / "logits.onnx", on, CALIB, Int8Config(**BASE), None)["output_fit"]
    quantize_int8(models / "logits.onnx", off, CALIB, Int8Config(**BASE, output_fit=False), None)
    assert record["applied"] == 0 and "ridge" not in record["layers"][0]
    a, b = _inits(on), _inits(off)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in b)


def test_a_reshape_that_moves_the_rows_leaves_the_head_unfitted(models, tmp_path):
    """A Reshape after the layer that does not keep one row per sample ([N, 10] -> [2N, 5]) hands
    the fit outputs whose rows are not the layer's: it fits nothing (and does not fail)."""
    _regrouped(models / "logits.onnx", tmp_path / "halves.onnx", [-1, 5])
    summary = quantize_int8(tmp_path / "halves.onnx", tmp_path / "q.onnx", CALIB, Int8Config(**BASE), None)
    assert summary["output_fit"]["layers"] == [] and summary["output_fit"]["applied"] == 0


def test_an_output_after_a_nonlinearity_is_no_head(models, tmp_path):
    model = onnx.load(str(models / "logits.onnx"))
    logits = model.graph.output[0].name
    model.graph.node.append(helper.make_node("Relu", [logits], ["out"]))
    model.graph.output[0].name = "out"
    onnx.save(model, str(tmp_path / "relu.onnx"))
    summary = quantize_int8(tmp_path / "relu.onnx", tmp_path / "q.onnx", CALIB, Int8Config(**BASE), None)
    assert "output_fit" not in summary


def test_a_trial_gets_the_full_models_fit(models, tmp_path, monkeypatch):
    """A mixed-precision trial (a conv left fp32) is written with the full model's refit head, so
    trials differ only by the layers they leave float (every fit kept that is not twice as bad)."""
    monkeypatch.setattr(output_fit, "GAIN", -1.0)
    with calibrated(models / "margin.onnx", CALIB, Int8Config(**BASE), None) as write:
        trial = write(tmp_path / "trial.onnx", ["conv1"])
        full = write(tmp_path / "full.onnx", [])
    assert trial["output_fit"]["applied"] == full["output_fit"]["applied"] == 1
    assert trial["fp32_compute_ops"] == {"Conv": 1} and not full["fp32_compute_ops"]
    t, f = _inits(tmp_path / "trial.onnx"), _inits(tmp_path / "full.onnx")
    assert np.array_equal(t["w3_quantized"], f["w3_quantized"])


def test_on_by_default_and_off_by_flag(edgekit, models, tmp_path):
    np.savez(tmp_path / "calib.npz", x=smooth_images(96, seed=3))
    args = ["compress", str(models / "probs.onnx"), "--int8", "--calib", str(tmp_path / "calib.npz")]
    for out, flag in (("default", ()), ("off", ("--no-output-fit",))):
        r = edgekit(*args, *flag, "-o", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
    passes = {
        o: json.loads((tmp_path / o / "edgekit.json").read_text())["passes"][-1] for o in ("default", "off")
    }
    assert passes["default"]["config"]["output_fit"] is True
    assert passes["default"]["summary"]["output_fit"]["layers"][0]["output"] == "probs"
    assert passes["off"]["config"]["output_fit"] is False and "output_fit" not in passes["off"]["summary"]
    r = edgekit("compress", str(models / "probs.onnx"), "--no-output-fit", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "add --int8" in r.stderr


def test_a_sigmoid_head_is_fitted_as_logits_that_stop_where_fp32_saturates():
    """fp32's probabilities become the logits to fit; where fp32 is within EDGE of 0 or 1, an INT8
    logit already further out is kept (nothing to gain there), one short of it is pulled to the edge."""
    edge = np.log((1 - output_fit.EDGE) / output_fit.EDGE)
    ref = np.array([[0.5, 0.9, 1e-7, 1e-7, 1 - 1e-7]])
    z = np.array([[1.0, 1.0, -20.0, -3.0, 30.0]])
    t = output_fit._targets(ref, z, "Sigmoid")
    np.testing.assert_allclose(t, [[0.0, np.log(9.0), -20.0, -edge, 30.0]], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(output_fit._linked(t, "Sigmoid")[0, :2], [0.5, 0.9])


def test_the_outputs_are_judged_as_the_user_declares_them(edgekit, models, tmp_path):
    """A regression output a generic name and shape would have judged as class scores (a detector's
    [N, 4] box offsets named output_0): with --output-kind NAME=other, the range search and the
    output fit score it by squared error, as verification does, and the manifest says so."""
    np.savez(tmp_path / "calib.npz", x=smooth_images(96, seed=3))
    name = onnx.load(str(models / "logits.onnx")).graph.output[0].name
    args = ["compress", str(models / "logits.onnx"), "--int8", "--calib", str(tmp_path / "calib.npz")]
    judged = {}
    for out, flag in (("plain", ()), ("declared", ("--output-kind", f"{name}=other"))):
        r = edgekit(*args, *flag, "--range-search", "-o", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
        summary = json.loads((tmp_path / out / "edgekit.json").read_text())["passes"][-1]["summary"]
        judged[out] = summary["range_search"]["judged"]
    assert judged == {"plain": {name: "classes"}, "declared": {name: "other"}}
