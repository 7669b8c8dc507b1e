"""Loss-aware activation ranges (edgekit.compress.range_search): a range inflated by rare outliers is
shrunk to what the outputs need, the int32 biases follow the new scales, a folded ReLU6 is never
widened past its clip, and a mixed-precision trial gets the full model's factors."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from models import resnet_blocks, smooth_images
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edgekit.artifact import InputSpec, TensorSpec
from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress import macs, range_search
from edgekit.compress.quantize import Int8Config, calibrated, quantize_int8
from edgekit.data import Samples
from edgekit.export.onnx import ExportConfig, export
from edgekit.target_cpu import here


@pytest.fixture(scope="module")
def fp32(depthwise_onnx):
    return depthwise_onnx


def _outlier_images() -> np.ndarray:
    """The samples the search compares outputs on (as many as it takes) and validates them on,
    then four with a bright outlier blob (on images 96-99, whose values there are large): MinMax
    ranges stretch to them, so most values get a few levels."""
    typical = range_search.MOST + range_search.VALIDATE
    x = smooth_images(typical + 4, seed=1)
    x[typical:] = x[96:100]
    x[typical:, :, 8:16, 8:16] *= 12
    return x


@pytest.fixture(scope="module")
def calib():
    return Samples({"x": _outlier_images()}, None)


def _run(path, x):
    """PATH's output on X, its Q/DQ computed as written: the models are made for a VNNI CPU, whose
    fused kernels saturate on an AVX2-only one (the larger levels of shrunk ranges, the more)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def searched(fp32, calib, tmp_path_factory):
    """on -> (QDQ path, summary), MinMax calibration, range search on and off."""
    root, out = tmp_path_factory.mktemp("q"), {}
    for on in (False, True):
        cfg = Int8Config(
            calibration="minmax", target_cpu="x86-vnni", adaround=False, range_search=on, output_fit=False
        )
        out[on] = root / f"{on}.onnx", quantize_int8(fp32, root / f"{on}.onnx", calib, cfg, None)
    return out


def test_inflated_ranges_shrink_and_the_outputs_come_closer(fp32, searched):
    record = searched[True][1]["range_search"]
    assert record["scaled"] >= 1 and record["applied"] == record["scaled"] == len(record["factors"])
    # made for a VNNI CPU: where this one saturates, the search ran the Q/DQ as written (a search on
    # the saturating kernels fitted their overflow: 12.9 dB here against 25.5 dB unsearched, AVX2 EPYC)
    assert record.get("computed") == ("Q/DQ as written" if here().saturates else None), record
    on, off = _inits(searched[True][0]), _inits(searched[False][0])  # the record names what was scaled
    assert all(on[name] == pytest.approx(off[name] * f, rel=1e-3) for name, f in record["factors"].items())
    assert record["output_error"][1] < 0.75 * record["output_error"][0]
    assert record["held_out_error"][1] < 0.75 * record["held_out_error"][0]
    x = smooth_images(64, seed=7)  # held out: typical samples
    ref = _run(fp32, x)
    assert sqnr_db(ref, _run(searched[True][0], x)) > sqnr_db(ref, _run(searched[False][0], x)) + 1
    assert "range_search" not in searched[False][1]


def test_a_search_far_under_its_budget_chooses_on_more_samples(searched):
    """A search that computes far under GROW multiply-accumulates (this small model's) chooses its
    factors on more than SAMPLES samples (fewer overfit them), MOST at most, and validates them on
    the VALIDATE after those."""
    record = searched[True][1]["range_search"]
    assert record["samples"] == range_search.MOST > range_search.SAMPLES
    assert record["held_out_samples"] == range_search.VALIDATE


def test_the_sample_count_follows_the_work_counted_on_the_samples_shapes(fp32, calib, tmp_path, monkeypatch):
    """The count is the model's work, not a timing (one command, one model on any machine): a
    dynamic picture's work is counted at the calibration samples' own size (twice the side, four
    times the work), and a GROW under this model's search keeps SAMPLES however fast it ran."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, "h", "w"])
    w = numpy_helper.from_array(np.ones((8, 3, 3, 3), np.float32), "w")
    conv = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(helper.make_graph([conv], "g", [x], [y], [w])), dynamic)
    assert macs.macs(dynamic, {"x": (1, 3, 16, 16)}) == {"conv": 16 * 16 * 8 * 27}
    assert macs.macs(dynamic, {"x": (1, 3, 32, 32)}) == {"conv": 4 * 16 * 16 * 8 * 27}
    monkeypatch.setattr(range_search, "GROW", 1.0)
    cfg = Int8Config(calibration="minmax", target_cpu="x86-vnni", adaround=False)
    record = quantize_int8(fp32, tmp_path / "q.onnx", calib, cfg, None)["range_search"]
    assert record["samples"] == range_search.SAMPLES


def test_the_search_sweeps_again_while_a_sweep_scales_something(tmp_path, monkeypatch):
    """A range scaled late changes what an earlier one's best factor is: the search sweeps again
    from the ranges the last sweep left, while it scaled any, SWEEPS at most; each sweep lowers the
    error or leaves it (a factor is adopted only where it lowers it), and the record's factors, the
    products of the sweeps', are what the written model's scales are. On a classifier with small
    margins and outliers in its calibration data the second sweep finds what the first left. At a
    terminal each sweep shows its progress."""
    import io

    from models import margin_classifier
    from rich.console import Console

    from edgekit import progress

    shown = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=shown, force_terminal=True, width=100))
    margin_classifier(tmp_path / "c.onnx")
    calib = Samples({"x": _outlier_images()}, None)
    cfg = dict(calibration="minmax", target_cpu="x86-vnni", adaround=False, per_channel=False)
    on, off = tmp_path / "on.onnx", tmp_path / "off.onnx"
    record = quantize_int8(tmp_path / "c.onnx", on, calib, Int8Config(**cfg), None)["range_search"]
    quantize_int8(tmp_path / "c.onnx", off, calib, Int8Config(**cfg, range_search=False), None)
    errors = record["sweep_errors"]
    assert record["sweeps"] == len(errors) and 2 <= len(errors) <= range_search.SWEEPS
    assert errors[1] < errors[0] * (1 - range_search.GAIN)  # the second sweep found more
    assert all(b <= a for a, b in itertools.pairwise(errors))
    assert record["output_error"][1] == errors[-1]
    assert all(f"activation ranges (sweep {k})" in shown.getvalue() for k in range(1, len(errors) + 1))
    written, plain = _inits(on), _inits(off)
    assert all(written[n] == pytest.approx(plain[n] * f, rel=1e-3) for n, f in record["factors"].items())


def _inits(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def test_biases_are_requantized_with_the_new_input_scales(fp32, searched, tmp_path):
    """Every range a layer with an int32 bias reads, halved: the bias's scale is the new input scale
    x its weights' (what QLinearConv computes with), it still stands for the same float bias, and
    the model's outputs move by no more than the coarser levels do."""
    shutil.copyfile(searched[False][0], tmp_path / "q.onnx")
    acts = range_search.activations(onnx.load(str(tmp_path / "q.onnx")), onnx.load(str(fp32)))
    halved = {a.scale: 0.5 for a in acts if a.biases}
    assert halved and range_search.apply(tmp_path / "q.onnx", fp32, halved) == len(halved)
    on, off = _inits(tmp_path / "q.onnx"), _inits(searched[False][0])
    for act in (a for a in acts if a.biases):
        np.testing.assert_allclose(on[act.scale], 0.5 * off[act.scale], rtol=1e-6)
        for bias, bias_scale, weight_scale in act.biases:
            np.testing.assert_allclose(on[bias_scale], on[act.scale] * on[weight_scale], rtol=1e-6)
            before, after = off[bias] * off[bias_scale], on[bias] * on[bias_scale]
            assert np.all(np.abs(after - before) <= 0.5 * on[bias_scale] + 1e-7)
    x = smooth_images(16, seed=7)
    ref = _run(fp32, x)
    assert sqnr_db(ref, _run(tmp_path / "q.onnx", x)) > 10


def test_a_folded_relu6_is_never_widened_past_its_clip(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(), nn.Conv2d(8, 4, 1), nn.Flatten()).eval()
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", 3, 8, 8])])
    (tmp_path / "fp32").mkdir()
    fp32 = export(net, spec, tmp_path / "fp32", ExportConfig(), 1)
    calib = Samples({"x": smooth_images(16, (3, 8, 8), seed=2) * 0.2}, None)  # ReLU6 well below 6
    cfg = Int8Config(calibration="minmax", target_cpu="x86-vnni", adaround=False, range_search=False)
    quantize_int8(fp32, tmp_path / "q.onnx", calib, cfg, None)
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert "Clip" not in {n.op_type for n in model.graph.node}  # the quantizer folded it
    inits = _inits(tmp_path / "q.onnx")
    zeros = {n.input[1]: n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    bounded = [
        (a.ceiling, (255 - int(inits[zeros[a.scale]])) * float(inits[a.scale]))
        for a in range_search.activations(model, onnx.load(str(fp32)))
        if np.isfinite(a.ceiling)
    ]
    assert len(bounded) == 1
    ceiling, top = bounded[0]
    assert ceiling == pytest.approx(6.0 / top) and ceiling > 1


def test_a_trial_gets_the_full_models_factors(fp32, calib, tmp_path, monkeypatch):
    """The first write leaves a layer fp32: the factors still come from the full INT8 model, searched
    once; a later write, and a calibration handed them (a Ray worker's), apply the same ones."""
    calls = []
    real = range_search.search
    monkeypatch.setattr(range_search, "search", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = Int8Config(calibration="minmax", target_cpu="x86-vnni", adaround=False, range_search=True)
    layer = next(n.name for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv")
    with calibrated(fp32, calib, cfg, None) as write:
        trial = write(tmp_path / "trial.onnx", [layer])
        factors = dict(write.prepared().ranges)
        full = write(tmp_path / "full.onnx", [])
        prepared = write.prepared()
    assert len(calls) == 1 and factors and prepared.ranges == factors
    assert trial["range_search"]["output_error"] == full["range_search"]["output_error"]
    assert full["range_search"]["applied"] == len(factors) >= trial["range_search"]["applied"] >= 1
    with calibrated(fp32, calib, cfg, None, prepared) as write:
        again = write(tmp_path / "again.onnx", [])
    assert len(calls) == 1 and again["range_search"] == {"applied": len(factors)}
    x = smooth_images(8, seed=3)
    np.testing.assert_array_equal(_run(tmp_path / "full.onnx", x), _run(tmp_path / "again.onnx", x))


def test_on_by_default_and_off_by_flag(edgekit, fp32, calib, tmp_path):
    # the outliers first (the last samples are held out): inflated ranges, work for the search
    np.savez(tmp_path / "calib.npz", x=np.roll(calib.inputs["x"], 4, axis=0))
    args = ["compress", str(fp32), "--int8", "--no-adaround", "--calib", str(tmp_path / "calib.npz")]
    runs = {"default": (), "off": ("--no-range-search",), "named": ("--range-search",)}
    for out, flag in runs.items():
        r = edgekit(*args, *flag, "-o", str(tmp_path / out))
        assert r.returncode == 0, r.stderr
    passes = {o: json.loads((tmp_path / o / "edgekit.json").read_text())["passes"][-1] for o in runs}
    default, off, named = passes["default"], passes["off"], passes["named"]
    assert default["config"]["range_search"] is True
    assert default["summary"]["range_search"]["activations"] >= 1
    assert default["config"]["range_search_budget"] == Int8Config().range_search_budget
    assert off["config"]["range_search"] is False and "range_search" not in off["summary"]
    assert named["config"]["range_search_budget"] is None  # asked for by name: no time limit
    r = edgekit("compress", str(fp32), "--range-search", "-o", str(tmp_path / "x"))
    assert r.returncode == 2 and "add --int8" in r.stderr


def test_a_search_projected_over_its_budget_is_skipped_and_says_so(fp32, calib, searched, tmp_path):
    """A budget below one evaluation's time: no range is scaled, the model is the one without the
    search, and the record says what the search would have cost."""
    cfg = Int8Config(
        calibration="minmax",
        target_cpu="x86-vnni",
        adaround=False,
        range_search_budget=1e-6,
        output_fit=False,
    )
    summary = quantize_int8(fp32, tmp_path / "q.onnx", calib, cfg, None)
    record = summary["range_search"]
    assert record["applied"] == 0 and "projected" in record["skipped"] and "budget" in record["skipped"]
    x = smooth_images(8, seed=3)
    np.testing.assert_array_equal(_run(tmp_path / "q.onnx", x), _run(searched[False][0], x))


def test_a_search_over_its_budget_searches_the_last_activations_it_fits(fp32, calib, searched, tmp_path):
    """A budget an eighth of the whole search's time (a sixteenth or less where the machine ran this
    search faster than the whole one, its projection a wall-clock measurement: the two xdist workers
    share two cores): the search first chooses on fewer samples (in proportion to the budget, FEWEST
    at least: a wall-clock projection can leave a sample or two above it), then tries the activations
    nearest the outputs that fit it (or stops where it runs out), keeps what it found, and says so;
    every range it scaled is one of those."""
    whole = searched[True][1]["range_search"]
    for divisor in (8, 16, 32, 64):
        budget = whole["seconds"] / divisor
        cfg = Int8Config(
            calibration="minmax", target_cpu="x86-vnni", adaround=False, range_search_budget=budget
        )
        record = quantize_int8(fp32, tmp_path / "q.onnx", calib, cfg, None)["range_search"]
        if "partial" in record:
            break
    assert "partial" in record and "budget" in record["partial"]
    assert range_search.FEWEST <= record["samples"] < range_search.SAMPLES <= whole["samples"]
    (first, end), n = record["searched"], record["activations"]
    assert 0 < first < end <= n == whole["activations"] and whole["searched"] == [0, n]
    assert record["sweeps"] == 1  # the budget cut the first sweep short: none left for another
    model = onnx.load(str(searched[False][0]))
    order = [a.scale for a in range_search.activations(model, onnx.load(str(fp32)))]
    assert set(record["factors"]) <= set(order[first:end])
    assert record["applied"] == record["scaled"] and record["output_error"][1] <= record["output_error"][0]


def test_an_int8_model_already_faithful_is_left_alone(tmp_path):
    """Smooth blocks whose INT8 outputs are within 40 dB of fp32's: nothing to search for."""
    module, shapes = resnet_blocks()
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", *shapes[0][1:]])])
    src = export(module, spec, tmp_path, ExportConfig(), 1)
    calib = Samples({"x": smooth_images(24, seed=1)}, None)
    cfg = Int8Config(calibration="minmax", adaround=False)
    summary = quantize_int8(src, tmp_path / "q.onnx", calib, cfg, None)
    assert "negligible" in summary["range_search"]["skipped"] and summary["range_search"]["applied"] == 0


@pytest.mark.parametrize("block", ["depthwise_se", "resnet_blocks"])
def test_a_trial_on_its_suffix_gives_the_whole_models_outputs(block, fp32, calib, tmp_path):
    """Every activation's factor, tried on the part of the model it changes fed with the quantized
    tensors the rest computed, gives ONNX Runtime's outputs of the whole scaled model (fused
    kernels both), and the part is a suffix: the last activation's leaves the first layers out."""
    if block == "resnet_blocks":  # residual Adds: a suffix reads the other branch's tensors too
        module, shapes = resnet_blocks()
        spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", *shapes[0][1:]])])
        src = export(module, spec, tmp_path, ExportConfig(), 1)
        samples = Samples({"x": smooth_images(20, seed=1)}, None)
    else:
        src, samples = fp32, calib.take(slice(0, 20))
    cfg = Int8Config(calibration="minmax", target_cpu="x86-vnni", adaround=False, range_search=False)
    quantize_int8(src, tmp_path / "q.onnx", samples, cfg, None)
    model = onnx.load(str(tmp_path / "q.onnx"))
    acts = range_search.activations(model, onnx.load(str(src)))
    parts = range_search.suffixes(model, acts)
    assert len(acts) >= 4 and all(parts) and len(parts[-1].nodes) < len(model.graph.node) / 2
    scaler = range_search._Scaler(model, acts)
    for act, part in zip(acts, parts, strict=True):
        cache = range_search._Cache(model, samples, None, 1, True)
        cache.fill(part.cut)
        sub = range_search._suffix_model(model, part, cache.feeds())
        range_search._Scaler(sub, [act]).set(act, 0.5)
        scaler.set(act, 0.5)
        whole = range_search._outputs(model, samples, None, 1, True)
        for got, want in zip(cache.run(sub, part), whole, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        scaler.set(act, 1.0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_a_model_ending_in_softmax_is_judged_by_the_divergence_of_its_logits():
    """PP-OCRv4's recognizer ends in a Softmax over 6625 classes: a softmax of those probabilities
    is nearly uniform, its divergence ~0, and the search stopped as if nothing were left to gain.
    Its probabilities are now judged as they are: the same KL divergence as its logits'."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (4, 40, 6625))
    noisy = logits + rng.normal(0, 0.3, logits.shape)
    probs, noisy_probs = _softmax(logits), _softmax(noisy)
    assert range_search.judged_kinds([logits, probs], ["scores", "softmax_11.tmp_0"]) == [
        "sequence",
        "probabilities",
    ]
    kl = range_search.output_error([noisy], [logits], ["sequence"])
    assert kl > 100 * range_search.NEGLIGIBLE
    assert range_search.output_error([noisy_probs], [probs], ["probabilities"]) == pytest.approx(kl, rel=1e-3)


def test_sigmoid_scores_are_judged_as_the_probabilities_they_are():
    """torchcrepe scores 360 pitch bins each by a Sigmoid: a softmax of values in [0, 1] is nearly
    uniform, and the search skipped as "negligible" a model that moved 20 % of its pitches."""
    rng = np.random.default_rng(2)
    bins = np.arange(360)
    peaks = rng.integers(20, 340, 64)[:, None]
    scores = np.exp(-(((bins[None] - peaks) / 8.0) ** 2))
    moved = np.exp(-(((bins[None] - peaks - 3) / 8.0) ** 2))
    assert range_search.judged_kinds([scores], ["pitch"]) == ["probabilities"]
    judged, softmaxed = (
        range_search.output_error([moved], [scores], [k]) for k in ("probabilities", "classes")
    )
    assert judged > 1000 * range_search.NEGLIGIBLE and judged > 40 * softmaxed


def test_agreement_where_fp32_is_confident_reads_probabilities_as_they_are():
    from edgekit.benchmarks.metrics import fidelity

    rng = np.random.default_rng(1)
    logits = rng.normal(0, 1, (64, 1000))
    logits[:32, 0] += 20  # half the samples confident
    out = logits + rng.normal(0, 0.5, logits.shape)
    by_logits, by_probs = fidelity([logits], [out]), fidelity([_softmax(logits)], [_softmax(out)])
    assert by_logits["confident_fraction"] == by_probs["confident_fraction"] == 0.5
    assert by_probs["top1_agreement_confident"] == by_logits["top1_agreement_confident"]


def test_a_time_major_output_of_a_fixed_batch_model_is_searched(tmp_path):
    """A recognizer exported with batch 1 and its sequence time-major ([T, 1, C], ddddocr's CRNN):
    a trial's outputs are joined on their batch axis as the whole model's are (they were cut to the
    first time step, and the search stopped on a shape mismatch)."""
    from models import save_onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(0, 0.3, (16, 8, 3)), rng.normal(0, 0.3, (12, 16, 1))
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["logits"]),
        helper.make_node("Transpose", ["logits"], ["y"], perm=[2, 0, 1]),
    ]
    inits = [numpy_helper.from_array(w.astype(np.float32), n) for w, n in ((w1, "w1"), (w2, "w2"))]
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 20])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [20, 1, 12])
    save_onnx(tmp_path / "tm.onnx", nodes, [x_info], [y_info], inits)
    typical = range_search.MOST + range_search.VALIDATE
    x = rng.normal(0, 1, (typical + 4, 8, 20)).astype(np.float32)
    x[typical:, :, 5:9] *= 12  # outliers MinMax stretches to: ranges worth searching
    cfg = Int8Config(calibration="minmax", target_cpu="x86-vnni", adaround=False)
    summary = quantize_int8(tmp_path / "tm.onnx", tmp_path / "q.onnx", Samples({"x": x}, None), cfg, 1)
    record = summary["range_search"]
    assert "skipped" not in record and record["activations"] >= 2 and record["output_error"][1] > 0
