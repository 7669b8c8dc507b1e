"""`edgekit compress` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hostile import IMPORT_LEFTOVERS, SHAPE, assert_refused, hashes_of, wait_for


def test_force_refuses_to_delete_calibration_data_inside_the_output(edgekit, tiny, work):
    """`--calib victim/calib.npz -o victim --force` once deleted the calibration file it read."""
    victim = work / "victim"
    r = edgekit("export", tiny / "model.ts.pt", "--input-shape", SHAPE, "-o", victim)
    assert r.returncode == 0, r.stderr
    calib = victim / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(8, 1, 16, 16)).astype(np.float32))
    before = hashes_of(calib, victim / "edgekit.json")
    r = edgekit(
        "compress", tiny / "model.ts.pt", "--input-shape", SHAPE, "--int8", "--calib", calib, "-o", victim,
        "--force",
    )  # fmt: skip
    msg = assert_refused(r, victim, [calib, victim / "edgekit.json"], before)
    assert "calib.npz" in msg and "would overwrite the input" in msg


@pytest.mark.slow  # two compress runs: 25 s
def test_force_through_a_symlink_replaces_the_artifact_it_points_at(edgekit, tiny, work):
    """-o a symlink to an artifact, with --force: the link stays and points at the new artifact,
    and no `.NAME.old-PID` is left beside either."""
    target = work / "v1"
    r = edgekit("export", tiny / "model.ts.pt", "--input-shape", SHAPE, "-o", target)
    assert r.returncode == 0, r.stderr
    link = work / "latest"
    link.symlink_to(target)
    r = edgekit(
        "compress", tiny / "model.ts.pt", "--input-shape", SHAPE, "--int8", "--calib", "random", "-o", link,
        "--force",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and link.resolve() == target.resolve()
    names = [p["name"] for p in json.loads((link / "edgekit.json").read_text())["passes"]]
    assert "int8" in names  # the new artifact, read through the link
    assert sorted(p.name for p in work.iterdir()) == ["latest", "v1"]


def test_an_empty_read_only_mount_as_output_with_force(edgekit, tiny, work):
    """A mount point cannot be renamed away: refused before any work, not after it."""
    mount = work / "mnt"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}); needs root")
    try:
        model = tiny / "model.ts.pt"
        before = hashes_of(model)
        r = edgekit("export", model, "--input-shape", SHAPE, "-o", mount, "--force")
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.splitlines()) == 1 and "mount point" in r.stderr, r.stderr
        assert sorted(p.name for p in work.iterdir()) == ["mnt"]
        assert hashes_of(model) == before
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize(
    "sig, code, said",
    [
        (signal.SIGINT, 130, "edgekit: interrupted; nothing was written."),
        (signal.SIGTERM, 143, "edgekit: terminated; nothing was written."),  # `timeout`, CI runners
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_leaves_nothing_behind(digits, edgekit, work, tmp_path, sig, code, said):
    """Ctrl-C or SIGTERM while the artifact is being built: exit 130 / 143, no output, no staging
    directory, no temporary files, inputs untouched.

    The signal goes when the run is seen inside calibration (its staging directory beside -o and
    the INT8 step's edgekit-q-* directory in its TMPDIR exist), never after a fixed sleep. What
    is left then is calibrating 5000 samples, seconds even on a fast CPU, against a 10 ms poll,
    so the run cannot finish first."""
    tmp = tmp_path / "tmp"  # the run's TMPDIR, to catch its temporary directories
    tmp.mkdir()
    out = work / "out"
    with np.load(digits.calib) as z:  # the training split 4 times over: 5748 samples
        calib = tmp_path / "calib-x4.npz"
        np.savez(calib, x=np.tile(z["x"], (4, 1, 1, 1)), y=np.tile(z["y"], 4))
    before = hashes_of(digits.model, calib)
    argv = edgekit.argv("compress", digits.model, "--int8", "--calib", calib, "--calib-size", 5000, "-o", out)
    proc = subprocess.Popen(
        argv,
        env=edgekit.env(TMPDIR=str(tmp)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: a pytest-xdist worker ignores SIGINT, which its children would inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_for(proc, "the staging directory appeared", lambda: any(work.glob(".out.*.partial")))
        wait_for(proc, "INT8 calibration started", lambda: any(tmp.glob("edgekit-q-*")))
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    assert "Traceback" not in stdout + stderr
    assert stderr.strip() == said
    assert list(work.iterdir()) == []  # neither the output nor its staging directory
    # and no temporary files: only what onnxruntime leaves in any process that imports it
    assert {p.name for p in tmp.iterdir()} <= IMPORT_LEFTOVERS
    assert hashes_of(digits.model, calib) == before


def test_host_starting_with_dash(edgekit, tiny, work):
    bin_dir, ran = work / "bin", work / "ssh-ran"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\ntouch {ran}\nexit 255\n")
    (bin_dir / "ssh").chmod(0o755)
    env = edgekit.env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    model, out = tiny / "model.ts.pt", work / "out"
    before = hashes_of(model)
    args = ("--int8", "--calib", "random", "--input-shape", SHAPE, "-o", out)
    r = edgekit("compress", model, *args, "--host", "-Fevil@cfg", env=env)
    msg = assert_refused(r, out, [model], before)
    assert "-Fevil@cfg" in msg and "starts with '-'" in msg, msg
    assert not ran.exists(), "ssh ran with the hostile target"


def _tiny_data(path: Path, n: int = 20, **arrays) -> Path:
    """An .npz of N samples for the tiny model (x, and labels 0..2 as y), overridden by ARRAYS."""
    rng = np.random.default_rng(0)
    data = {"x": rng.standard_normal((n, 1, 16, 16)).astype(np.float32), "y": np.arange(n) % 3}
    np.savez(path, **{**data, **arrays})
    return path


def test_calib_named_pipe(edgekit, tiny, work):
    """A named pipe as --calib hung forever (nothing ever writes to it): what is not a regular file
    or a folder is refused before it is opened."""
    pipe = work / "calib.npz"
    os.mkfifo(pipe)
    model = tiny / "model.ts.pt"
    for flag in ("--calib", "--eval"):
        data = ("--calib", "random", "--eval", pipe) if flag == "--eval" else ("--calib", pipe)
        argv = ("compress", model, "--input-shape", SHAPE, "--int8", *data, "-o", work / "out")
        r = edgekit(*argv, timeout=60)
        msg = assert_refused(r, work / "out", [model], hashes_of(model))
        assert f"{flag} {pipe}" in msg and "not a regular file" in msg


def test_calib_npz_that_is_no_zip(edgekit, tiny, work):
    """Random bytes named .npz were reported as pickled data, with advice to load it unsafely."""
    model = tiny / "model.ts.pt"
    calib = work / "calib.npz"
    calib.write_bytes(np.random.default_rng(0).bytes(1000))
    before = hashes_of(model, calib)
    r = edgekit("compress", model, "--input-shape", SHAPE, "--int8", "--calib", calib, "-o", work / "out")
    msg = assert_refused(r, work / "out", [model, calib], before)
    assert str(calib) in msg and "not a .npz archive" in msg and "pickle" not in msg


def test_calib_function_that_fails(edgekit, tiny_artifact, work):
    """A module:function that raises, returns None or a bare array: one sentence naming the source,
    the error's first line or what it must return, not a traceback. (The tiny model's ONNX file:
    the source format is not under test, and from ONNX no torch export runs.)"""
    (work / "batches.py").write_text(
        "import numpy as np\n"
        "def boom():\n"
        "    raise ValueError('no such bucket\\nsecond line')\n"
        "def later():\n"
        "    yield np.zeros((4, 1, 16, 16), np.float32)\n"
        "    raise OSError('the share went away')\n"
        "def nothing():\n"
        "    return None\n"
        "def array():\n"
        "    return np.zeros((4, 1, 16, 16), np.float32)\n"
    )
    model = tiny_artifact / "model.onnx"
    for fn, named in (
        ("boom", "raised ValueError: no such bucket"),
        ("later", "raised OSError: the share went away"),
        ("nothing", "returned None; it must return an iterable"),
        ("array", "returned an object of type ndarray; it must return an iterable"),
    ):
        argv = ("compress", model, "--int8", "--calib", f"batches:{fn}")
        r = edgekit(*argv, "-o", work / "out", cwd=work)
        msg = assert_refused(r, work / "out", [model], hashes_of(model))
        assert f"--calib batches:{fn}" in msg and named in msg and "second line" not in msg


def test_eval_function_that_never_ends(edgekit, tiny, work):
    """A generator that never ends, given to --eval without --eval-size, grew to 3 GB: at most
    10,000 samples are taken, the iteration stops there, and the output says so."""
    (work / "stream.py").write_text(
        "import numpy as np\n"
        "def forever():\n"
        "    taken = 0\n"
        "    while True:\n"
        "        if taken >= 20_000:  # a bound for this test only: iterating on past the cap fails\n"
        "            raise RuntimeError('iterated far past the samples needed')\n"
        "        taken += 100\n"
        "        yield np.ones((100, 1, 16, 16), np.float32)\n"
    )
    out = work / "out"
    argv = ("compress", tiny / "model.ts.pt", "--input-shape", SHAPE, "--int8", "--calib", "random")
    r = edgekit(*argv, "--calib-size", "8", "--eval", "stream:forever", "-o", out, cwd=work)
    assert r.returncode == 0, r.stderr
    assert "took the first 10,000 samples of stream:forever" in r.stdout
    evaluation = json.loads((out / "edgekit.json").read_text())["data"]["evaluation"]
    assert evaluation["count"] == 10_000 and "--eval-size" in evaluation["warning"]


def test_calib_x_and_y_of_different_lengths(edgekit, tiny, work):
    """20 inputs and 15 labels failed with IndexError's traceback (.npz) or calibrated silently
    (module:function): one sentence with both lengths."""
    model = tiny / "model.ts.pt"
    calib = _tiny_data(work / "calib.npz", y=np.arange(15) % 3)
    (work / "pairs.py").write_text(
        "import numpy as np\ndef pairs():\n    yield np.zeros((4, 1, 16, 16), np.float32), np.arange(3)\n"
    )
    before = hashes_of(model, calib)
    for source, lengths in ((calib, ("x has 20", "y has 15")), ("pairs:pairs", ("has 4", "y has 3"))):
        argv = ("compress", model, "--input-shape", SHAPE, "--int8", "--calib", source)
        r = edgekit(*argv, "-o", work / "out", cwd=work)
        msg = assert_refused(r, work / "out", [model, calib], before)
        assert str(source) in msg and all(part in msg for part in lengths)


def test_nan_and_inf_in_the_data(edgekit, tiny, work):
    """NaN in calibration data read as "the ONNX model diverges from torch" (exit 1, numpy warnings
    beside it): the data, the sample and what it holds are named when it is loaded, and no
    RuntimeWarning reaches stderr even where warnings are on."""
    model = tiny / "model.ts.pt"
    x = np.random.default_rng(0).standard_normal((20, 1, 16, 16)).astype(np.float32)
    x[7, 0, 3, 3] = np.nan
    calib = _tiny_data(work / "calib.npz", x=x)
    (work / "stream.py").write_text(
        "import numpy as np\n"
        "def inf():\n"
        "    x = np.zeros((4, 1, 16, 16), np.float32)\n"
        "    x[2, 0, 0, 0] = np.inf\n"
        "    yield x\n"
    )
    huge = _tiny_data(work / "huge.npz", x=np.full((20, 1, 16, 16), 1e300))  # float64, past float32
    before = hashes_of(model, calib, huge)
    env = edgekit.env(PYTHONWARNINGS="always::RuntimeWarning")
    for data, named in (
        (("--calib", calib), f"--calib {calib}: sample 7 holds NaN"),
        (("--calib", "random", "--eval", "stream:inf"), "--eval stream:inf: sample 2 holds Inf"),
        (("--calib", huge), "float32 cannot hold"),
    ):
        argv = ("compress", model, "--input-shape", SHAPE, "--int8", *data, "-o", work / "out")
        r = edgekit(*argv, cwd=work, env=env)
        assert named in assert_refused(r, work / "out", [model, calib, huge], before)


def test_eval_labels_outside_the_models_classes(edgekit, digits, work):
    """Labels 1000 and -5 on the 10-class digits CNN (ONNX) gave "top-1 0.00 %" and exit 0: refused, with
    the label range found and the classes the model outputs, before calibration."""
    with np.load(digits.test) as z:
        x = z["x"][:40]
    test = work / "test.npz"
    np.savez(test, x=x, y=np.array([1000, -5] * 20))
    before = hashes_of(digits.onnx, test)
    argv = ("compress", digits.onnx, "--int8", "--calib", digits.calib, "--eval", test)
    msg = assert_refused(edgekit(*argv, "-o", work / "out"), work / "out", [digits.onnx, test], before)
    assert str(test) in msg and "from -5 to 1000" in msg and "outputs 10 classes" in msg


def test_eval_labels_that_are_not_whole_numbers(edgekit, tiny, work):
    """Float labels like 2.5 were cut to 2 and scored: one sentence naming the sample and value."""
    model = tiny / "model.ts.pt"
    test = _tiny_data(work / "test.npz", y=np.array([1.0, 2.5] * 10))
    before = hashes_of(model, test)
    argv = ("compress", model, "--input-shape", SHAPE, "--int8", "--calib", "random", "--eval", test)
    msg = assert_refused(edgekit(*argv, "-o", work / "out"), work / "out", [model, test], before)
    assert f"--eval {test}" in msg and "whole class numbers" in msg and "sample 1 is 2.5" in msg


def test_sample_counts_below_one(edgekit, tiny, work):
    """--eval-size 0 used every sample and -3 all but three, silently; --calib-size too."""
    model = tiny / "model.ts.pt"
    test = _tiny_data(work / "test.npz")
    before = hashes_of(model, test)
    for flag, value in (("--eval-size", "0"), ("--eval-size", "-3"), ("--calib-size", "0")):
        argv = ("compress", model, "--input-shape", SHAPE, "--int8", "--calib", test, "--eval", test)
        r = edgekit(*argv, flag, value, "-o", work / "out")
        msg = assert_refused(r, work / "out", [model, test], before)
        assert flag in msg and value in msg and "x>=1" in msg


def test_percentile_out_of_range(edgekit, tiny, work):
    """--percentile 0, 101 or nan gave pydantic's traceback: one sentence with the range."""
    model = tiny / "model.ts.pt"
    for value in ("0", "50", "101", "nan"):
        argv = ("compress", model, "--input-shape", SHAPE, "--int8", "--calib", "random")
        r = edgekit(*argv, "--percentile", value, "-o", work / "out")
        msg = assert_refused(r, work / "out", [model], hashes_of(model))
        assert "--percentile" in msg and "90<x<=100" in msg


def test_std_zero_or_not_finite(edgekit, tiny, work, png):
    """Pixels are divided by --std: zero (or nan) would turn every calibration image into inf/nan."""
    png(work / "calib" / "a.png")
    model = tiny / "model.ts.pt"
    for std in ("0", "nan", "-1"):
        out = work / "out"
        r = edgekit(
            "compress",
            model,
            "--input-shape",
            SHAPE,
            "--int8",
            "--calib",
            work / "calib",
            "--std",
            std,
            "-o",
            out,
        )
        msg = assert_refused(r, out, [model], hashes_of(model))
        assert "--std" in msg and "positive" in msg


def test_bf16_of_a_model_openvino_cannot_compile(edgekit, work, needs_bf16):
    """A Det node runs in ONNX Runtime but OpenVINO has no conversion for it: --bf16 (computed in
    OpenVINO) printed OpenVINO's RuntimeError as a traceback; now one sentence naming the op."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Det", ["x"], ["det"]), helper.make_node("Unsqueeze", ["det", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "det", [x], [y], [axes])
    model = work / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), model)
    calib = work / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).standard_normal((8, 3, 3)).astype(np.float32))
    r = edgekit("compress", model, "--bf16", "--calib", calib, "-o", work / "out")
    msg = assert_refused(r, work / "out", [model, calib], hashes_of(model, calib))
    assert "OpenVINO could not compile model.onnx for cpu" in msg and "Det" in msg, msg


def test_a_model_quantized_dynamically_is_refused_for_int8(edgekit, depthwise_onnx, work):
    """ONNX Runtime's dynamic quantization (ConvInteger, DynamicQuantizeLinear; ddddocr ships such a
    file) holds no Q/DQ pair: `--int8` went on, quantized nothing and reported the model identical to
    itself. One sentence naming what it holds, exit 2."""
    from onnxruntime.quantization import quantize_dynamic

    quantized = work / "dynamic.onnx"
    quantize_dynamic(str(depthwise_onnx), str(quantized), op_types_to_quantize=["Conv"])
    before = hashes_of(quantized)
    r = edgekit("compress", quantized, "--int8", "--calib", "random", "--calib-size", "4", "-o", work / "out")
    msg = assert_refused(r, work / "out", [quantized], before)
    assert "already quantized" in msg and "ConvInteger x" in msg and "DynamicQuantizeLinear x" in msg


def test_a_model_quantized_dynamically_converts_to_fp16_around_its_integer_ops(edgekit, depthwise_onnx, work):
    """The same file's float ops go fp16 and its dynamic quantization stays as it was: the converter
    had turned DynamicQuantizeLinear's input fp16, which ONNX Runtime refuses to load."""
    from onnxruntime.quantization import quantize_dynamic

    quantized = work / "dynamic.onnx"
    quantize_dynamic(str(depthwise_onnx), str(quantized), op_types_to_quantize=["Conv"])
    r = edgekit("compress", quantized, "--fp16", "--calib", "random", "--calib-size", "4", "-o", work / "out")
    assert r.returncode == 0, r.stderr
    manifest = json.loads((work / "out" / "edgekit.json").read_text())
    kept = manifest["passes"][-1]["summary"]["kept_fp32_ops"]
    assert kept.get("DynamicQuantizeLinear") and kept.get("ConvInteger"), kept
