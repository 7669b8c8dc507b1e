"""AdaRound (edgekit.compress.adaround) inside the int8 pass, on the exported depthwise-separable
CNN of tests/models.py (stem conv, 1x1 expand, depthwise 3x3, squeeze-excite 1x1 convs, 1x1
project, classifier Gemm): on the calibration data each layer's output error is below nearest
rounding's, every level is the floor or ceil of W / s inside the quantizer's range (7 bits where
the form asks for them), the model's SQNR to fp32 is not worse, and `adaround: false` (or
`--no-adaround`) gives ORT's nearest rounding."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from models import smooth_images
from onnx import numpy_helper

from edgekit.benchmarks.metrics import sqnr_db
from edgekit.compress import tensors
from edgekit.compress.bias_correction import quantized_layers, weight_levels
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.compress.tensors import FLOAT
from edgekit.data import Samples


@pytest.fixture(scope="module")
def fp32(depthwise_onnx):
    return depthwise_onnx


@pytest.fixture(scope="module")
def calib():
    return Samples({"x": smooth_images(32, seed=1)}, None)


@pytest.fixture(scope="module")
def quantized(fp32, calib, tmp_path_factory):
    """(reduce_range, adaround) -> (QDQ path, summary): 8-bit weights, and 7-bit ones on every layer
    (what CPUs without VNNI get); bias correction, the range search and the output fit off, so the
    levels are compared alone, and the weights at the fp32 ones' shapes (no channel padding)."""
    out, root = {}, tmp_path_factory.mktemp("q")
    for reduce_range in ("none", "all"):
        for on in (False, True):
            cfg = Int8Config(
                reduce_range=reduce_range,
                target_cpu="x86-vnni",
                adaround=on,
                bias_correction=False,
                range_search=False,
                output_fit=False,
                pad_conv_channels=False,
            )
            path = root / f"{reduce_range}-{on}.onnx"
            out[reduce_range, on] = path, quantize_int8(fp32, path, calib, cfg, None)
    return out


def _layers(fp32, qdq):
    """Per quantized layer: its fp32 node, fp32 weight, integer levels, scale and zero point."""
    ref, model = onnx.load(str(fp32)), onnx.load(str(qdq))
    ref_w = {i.name: numpy_helper.to_array(i) for i in ref.graph.initializer}
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for src, _, weight in quantized_layers(ref.graph, model.graph):
        q, scale, zp = weight_levels(weight, inits)
        found[src.input[1]] = (src, ref_w[src.input[1]].astype(np.float64), q, scale, zp)
    return found


def _output_errors(fp32, qdq, x):
    """Per layer, the mean squared error of its output with the QDQ model's dequantized weight in
    place of the fp32 one, on the layer's fp32 inputs over X (the calibration data)."""
    model = onnx.load(str(fp32))
    layers = _layers(fp32, qdq)
    names = {src.input[0] for src, *_ in layers.values()}
    (inputs, _), *_ = tensors.values(
        model, dict.fromkeys(names, FLOAT), Samples({"x": x}, None), None, len(x)
    )
    errors = {}
    for name, (src, w, q, scale, zp) in layers.items():
        node = onnx.helper.make_node(src.op_type, ["a", "w"], ["y"])
        node.attribute.extend(src.attribute)
        io = [onnx.helper.make_tensor_value_info(n, FLOAT, None) for n in ("a", "w", "y")]
        graph = onnx.helper.make_graph([node], "layer", io[:2], io[2:])
        m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        a = inputs[src.input[0]]
        exact = sess.run(None, {"a": a, "w": w.astype(np.float32)})[0]
        rounded = sess.run(None, {"a": a, "w": ((q - zp) * scale).astype(np.float32)})[0]
        errors[name] = float(((exact - rounded) ** 2).mean())
    return errors


@pytest.mark.parametrize("form", ["none", "all"])
def test_each_layer_output_error_is_below_nearest_rounding(fp32, calib, quantized, form):
    nearest = _output_errors(fp32, quantized[form, False][0], calib.inputs["x"])
    adarounded = _output_errors(fp32, quantized[form, True][0], calib.inputs["x"])
    summary = quantized[form, True][1]["adaround"]
    assert summary["layers"] == len(nearest) >= 7 and summary["kept_nearest"] == 0
    assert summary["changed_weights"] > 0
    for name, err in nearest.items():
        assert adarounded[name] < err, (name, adarounded[name], err)
    ratio = np.mean([adarounded[n] / nearest[n] for n in nearest])
    assert ratio < 0.8, ratio  # measured 0.4-0.5 on both forms


@pytest.mark.parametrize("form, top", [("none", 127), ("all", 64)])
def test_levels_are_floor_or_ceil_within_the_range(fp32, quantized, form, top):
    for name, (_, w, q, scale, zp) in _layers(fp32, quantized[form, True][0]).items():
        x = w / scale + zp
        assert np.all((q == np.floor(x)) | (q == np.ceil(x))), name
        assert np.abs(q - zp).max() <= top, name


def test_model_sqnr_is_not_worse(fp32, quantized):
    x = smooth_images(64, seed=7)  # held out from calibration
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    ref = run(fp32)
    for form in ("none", "all"):
        off, on = (sqnr_db(ref, run(quantized[form, a][0])) for a in (False, True))
        assert on >= off, (form, on, off)


def test_off_is_nearest_rounding(fp32, quantized):
    for name, (_, w, q, scale, zp) in _layers(fp32, quantized["none", False][0]).items():
        np.testing.assert_array_equal(q, np.clip(np.round(w / scale) + zp, -127, 127), err_msg=name)
    assert "adaround" not in quantized["none", False][1]


def test_flag_turns_it_off_and_naming_it_lifts_its_budget(edgekit, fp32, tmp_path):
    flags = ("--int8", "--calib", "random", "--calib-size", "8", "--input-shape", "1,3,32,32")
    configs = {}
    for name, flag in {"off": "--no-adaround", "named": "--adaround"}.items():
        r = edgekit("compress", fp32, *flags, flag, "-o", tmp_path / name)
        assert r.returncode == 0, r.stderr
        configs[name] = json.loads((tmp_path / name / "edgekit.json").read_text())["passes"][-1]
    off, named = configs["off"], configs["named"]
    assert off["config"]["adaround"] is False and "adaround" not in off["summary"]
    assert off["config"]["adaround_budget"] == Int8Config().adaround_budget == 180.0  # the default
    assert named["config"]["adaround_budget"] is None  # asked for by name: no time limit
    assert named["summary"]["adaround"]["changed_weights"] > 0


@pytest.mark.parametrize(
    "channels, groups, kernel, stride, pads, dilation, size",
    [
        (6, 1, (3, 3), (2, 2), (0, 0, 1, 1), (1, 1), (10, 12)),  # dense, asymmetric padding
        (8, 8, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), (7, 7)),  # depthwise: patches overlap
        (8, 2, (3, 2), (1, 2), (1, 0, 2, 1), (2, 1), (10, 9)),  # grouped, dilated
        (16, 1, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), (12, 12)),  # 1x1
    ],
)
def test_the_gram_is_what_the_conv_computes(channels, groups, kernel, stride, pads, dilation, size):
    """Per output channel, w^T (X^T X) w is the sum of the squared conv outputs: the Gram's rows
    are the patches the conv reads (padding zeros included), in its weight's order."""
    import torch

    from edgekit.compress.adaround import Gram

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, channels, *size)).astype(np.float32)
    k = channels // groups * kernel[0] * kernel[1]
    gram = Gram(None, groups, k, 10**6, (kernel, stride, pads, dilation))  # every output position
    gram.add(x[:2])
    gram.add(x[2:])
    w = rng.standard_normal((2 * groups, channels // groups, *kernel)).astype(np.float32)
    t, left, b, r = pads
    xp = torch.nn.functional.pad(torch.from_numpy(x), (left, r, t, b))
    y = torch.nn.functional.conv2d(xp, torch.from_numpy(w), stride=stride, dilation=dilation, groups=groups)
    want = (y.double() ** 2).sum((0, 2, 3)).numpy()
    rows = w.reshape(groups, 2, k).astype(np.float64)  # (groups, out per group, K)
    got = np.einsum("gok,gkl,gol->go", rows, gram.total.numpy(), rows).reshape(-1)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert gram.rows == 3 * y.shape[2] * y.shape[3]


def _problems(rng) -> list:
    """AdaRound problems of three random layers: dense, depthwise (4 groups) and one whose metric
    is factored (3 input rows for 16 weights a channel)."""
    from edgekit.compress import adaround

    return [adaround._problem(*t) for t in _todo(rng)]


def _built(rng, n: int) -> tuple[list, list]:
    """_todo's layers as the solve builds them: problems in N shares, each share's flat tensors."""
    from edgekit.compress import adaround

    return adaround._build([(t, adaround._metric(t[1])) for t in _todo(rng)], n)


def _todo(rng) -> list:
    """What AdaRound's solve takes for _problems' layers."""
    import torch

    from edgekit.compress import adaround

    todo = []
    layers = (("dense", 1, 12, 40, 5), ("depthwise", 4, 9, 30, 1), ("low-rank", 1, 16, 3, 4))
    for name, groups, k, rows, out in layers:
        gram = adaround.Gram(
            None, groups, k, rows, ((1, 1), (1, 1), (0, 0, 0, 0), (1, 1))
        )  # (groups, out, K)
        x = rng.standard_normal((groups, rows, k))
        gram.total, gram.rows = torch.from_numpy(np.einsum("grk,grl->gkl", x, x)), rows
        w = rng.standard_normal((groups * out, k)) * 0.1
        scale = np.abs(w).max(1, keepdims=True) / 7
        q = np.clip(np.round(w / scale), -7, 7)
        todo.append((name, gram, w, q, scale, np.zeros_like(scale), np.iinfo(np.int8)))
    return todo


def test_layers_descended_in_shares_are_those_descended_together():
    """The solve splits the layers into a share per core, each descended in a thread of its own:
    each layer's rounding variables end where one descent of all the layers puts them."""
    from edgekit.compress import adaround

    (together,), (flat,) = _built(np.random.default_rng(0), 1)
    shares, flats = _built(np.random.default_rng(0), 2)
    apart = {p.name: p for share in shares for p in share}
    assert len(shares) == 2 and sorted(apart) == sorted(p.name for p in together)
    assert adaround._descend(together, flat, 50, None) == 50
    for share, f in zip(shares, flats, strict=True):
        adaround._descend(share, f, 50, None)
    start = {p.name: p for p in _problems(np.random.default_rng(0))}
    for a in together:
        b, first = apart[a.name], start[a.name]
        assert not np.allclose(a.v.numpy(), first.v.numpy()), f"{a.name} did not move"
        # the same but for float rounding (an elementwise kernel's vector tail falls elsewhere)
        np.testing.assert_allclose(a.v.numpy(), b.v.numpy(), rtol=1e-5, atol=1e-5)
        up = [adaround._h(p.v, p.low, p.high) >= 0.5 for p in (a, b)]
        assert bool((up[0] == up[1]).all()), a.name


def test_a_budget_cuts_the_iterations_then_the_layers_of_most_work():
    """Within a time budget the descent runs every iteration where they fit, fewer where they do
    not (MIN_ITERATIONS at least), and below that leaves the layers of most work at nearest
    rounding: what is left fits, each share's iteration costing what its work does."""
    from edgekit.compress import adaround

    problems = _problems(np.random.default_rng(0))
    names = lambda kept: [p.name for p in kept]  # noqa: E731

    def per_iteration(kept):  # seconds: the slowest share's work at 1 ms a unit
        return 1e-3 * max(sum(map(adaround._work, share)) for share in adaround._shares(kept, 2))

    work = {p.name: adaround._work(p) for p in problems}
    assert work["dense"] > work["depthwise"] > work["low-rank"]  # 5 x 12 x 12, 4 x 9 x 9, 4 x 16 x 3
    iterations, kept = adaround._fit(problems, 2, 1e-3, 1e6)
    assert iterations == adaround.ITERATIONS and sorted(names(kept)) == sorted(work)
    iterations, kept = adaround._fit(problems, 2, 1e-3, 150.5 * per_iteration(problems))
    assert iterations == 150 and len(kept) == 3
    # not even MIN_ITERATIONS of all three fit: the dense layer (most work) is left out
    left = (adaround.MIN_ITERATIONS - 1) * per_iteration(problems)
    iterations, kept = adaround._fit(problems, 2, 1e-3, left)
    assert names(kept) == ["low-rank", "depthwise"]
    assert iterations >= adaround.MIN_ITERATIONS and iterations * per_iteration(kept) <= left
    assert adaround._fit(problems, 2, 1e-3, 1e-9) == (0, [])


def test_a_budget_that_fits_nothing_leaves_nearest_rounding_and_says_so():
    from edgekit.compress import adaround

    todo = _todo(np.random.default_rng(0))
    chosen: dict = {}
    kept, limited = adaround._solve(todo, chosen, budget=1e-9)
    assert kept == 3 and limited == {"iterations": 0, "budget_s": 1e-9, "left_nearest_for_time": 3}
    for p in _problems(np.random.default_rng(0)):
        nearest = adaround._unlayout(p.nearest.double().numpy(), p.shape, p.gram)
        np.testing.assert_array_equal(chosen[p.name], nearest)
    _, limited = adaround._solve(todo, chosen, budget=1e6)
    assert limited == {}  # every iteration fit


def test_the_grams_that_do_not_fit_their_memory_are_not_collected_and_those_layers_stay_nearest(
    fp32, calib, quantized, tmp_path
):
    """The Grams are held through calibration: past half its memory budget the largest are not
    collected, their layers keep nearest rounding (the rest are AdaRounded as before) and the
    summary says how many."""
    from edgekit.compress import adaround

    grams = adaround.collect(fp32, len(calib.inputs["x"])).grams
    sizes = sorted(adaround.gram_bytes(g) for g in grams.values())
    assert len(set(sizes)) > 2  # the test model's layers differ in size
    some = adaround.collect(fp32, 32, memory=sum(sizes[:-2]))
    assert len(some.grams) == len(grams) - 2 and some.limited == {"left_nearest_for_gram_memory": 2}
    assert sorted(adaround.gram_bytes(g) for g in some.grams.values()) == sizes[:-2]  # the smallest
    left = set(grams) - set(some.grams)

    path = tmp_path / "limited.onnx"
    base = dict(target_cpu="x86-vnni", bias_correction=False, range_search=False, output_fit=False)
    summary = quantize_int8(
        fp32, path, calib, Int8Config(**base, pad_conv_channels=False, calib_memory=2 * sum(sizes[:-2])), None
    )
    assert summary["adaround"]["left_nearest_for_gram_memory"] == 2
    memory = summary["calibration_memory"]
    assert memory["budget_bytes"] == 2 * sum(sizes[:-2])  # as given,
    assert memory["adaround_statistics_bytes"] == sum(sizes[:-2])  # and what the Grams held of it
    limited, nearest = _layers(fp32, path), _layers(fp32, quantized["none", False][0])
    for name in left:
        np.testing.assert_array_equal(limited[name][2], nearest[name][2])
    assert any((limited[n][2] != nearest[n][2]).any() for n in set(limited) - left), "nothing was rounded"


def test_the_descent_shows_a_bar_and_a_remembered_ctrl_c_stops_it(monkeypatch):
    """At a terminal the descent shows its progress; a Ctrl-C (the main thread waits on the
    shares' threads) stops every share at its next iteration, not at the end of the budget."""
    import io
    import signal

    from rich.console import Console

    from edgekit import interrupts, progress
    from edgekit.compress import adaround

    shown = io.StringIO()
    monkeypatch.setattr(progress, "console", Console(file=shown, force_terminal=True, width=100))
    adaround._solve(_todo(np.random.default_rng(0)), {})
    assert "rounding weights (AdaRound)" in shown.getvalue()

    ran = []
    monkeypatch.setattr(
        adaround, "_gradient", lambda *a, _g=adaround._gradient, **k: ran.append(1) or _g(*a, **k)
    )
    monkeypatch.setattr(interrupts, "_received", [signal.SIGINT])
    with pytest.raises(KeyboardInterrupt):
        adaround._solve(_todo(np.random.default_rng(0)), {})
    assert len(ran) <= 2, f"{len(ran)} iterations ran after the Ctrl-C"  # one a share at most


def test_a_memory_limit_leaves_the_largest_layers_nearest_and_says_so():
    """Where the layers' descent would not fit the memory it is given (BYTES_PER_WEIGHT a weight),
    the largest keep nearest rounding before any is built; the rest are AdaRounded as before."""
    from edgekit.compress import adaround

    todo = _todo(np.random.default_rng(0))
    assert [t[2].size for t in todo] == [60, 36, 64]  # dense, depthwise, low-rank
    nearest = {
        p.name: adaround._unlayout(p.nearest.numpy(), p.shape, p.gram)
        for p in _problems(np.random.default_rng(0))
    }
    chosen: dict = {}
    kept, limited = adaround._solve(todo, chosen, memory=(60 + 36) * adaround.BYTES_PER_WEIGHT)
    assert limited == {"left_nearest_for_memory": 1} and kept >= 1
    np.testing.assert_array_equal(chosen["low-rank"], nearest["low-rank"])
    assert any((chosen[n] != nearest[n]).any() for n in ("dense", "depthwise")), "nothing was rounded"
    chosen = {}
    kept, limited = adaround._solve(todo, chosen, memory=1)  # not even the smallest: no descent at all
    assert kept == 3 and limited == {"left_nearest_for_memory": 3}
    for name, levels in nearest.items():
        np.testing.assert_array_equal(chosen[name], levels)


@pytest.mark.parametrize("beta", [None, 20.0, 2.0])
def test_the_written_out_gradient_is_autograds(beta):
    """AdaRound's step follows the gradient of its loss (the layers' output errors plus, after the
    warm-up, the rounding regularizer), computed by hand: the same as autograd's of the loss."""
    import torch

    from edgekit.compress import adaround

    rng = np.random.default_rng(0)
    (problems,), ((v, rest, s, low, high),) = _built(rng, 1)
    assert [p.factored for p in problems] == [False, False, True]
    assert bool(low.any()), "no weight is held at its level: the test shows less"
    v = v + torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32))  # away from the start
    got = adaround._gradient(v, rest, s, low, high, problems, beta)

    traced = v.clone().requires_grad_()
    h = adaround._h(traced, low, high)
    loss = 0
    for d, p in zip(torch.split(rest - s * h, [p.v.numel() for p in problems]), problems, strict=True):
        m = p.m @ p.m.transpose(-1, -2) if p.factored else p.m
        loss = loss + (d.view(p.rest.shape) @ m * d.view(p.rest.shape)).sum()  # tr(dW M dW^T)
    if beta is not None:
        loss = loss + adaround.REG * (1 - (2 * h - 1).abs().pow(beta)).sum()
    loss.backward()
    np.testing.assert_allclose(got.numpy(), traced.grad.numpy(), rtol=1e-4, atol=1e-6)
