"""`edgekit bench` given hostile or careless input: one sentence and the right exit code, nothing
written, inputs untouched, no code run that the user did not allow (see docs/guide/errors.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from hostile import SHAPE, assert_refused, hashes_of, sha256


def _bench_rows(edgekit, art, work, *args, cwd=None, env=None) -> list[dict]:
    """`edgekit bench ART --runtime eager` (one run) with ARGS; the records it saved."""
    out = work / "rows.json"
    r = edgekit(
        "bench", art, "--runtime", "eager", "--runs", 1, "--warmup", 0, "--json", out, *args, cwd=cwd, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(out.read_text())


def test_manifest_cannot_grant_trust_pickle(edgekit, tiny, work):
    import torch
    from artifacts import rewrite_manifest

    art = work / "art"
    r = edgekit("export", tiny / "model.ts.pt", "--input-shape", SHAPE, "-o", art)
    assert r.returncode == 0, r.stderr
    # A malicious pickle: loading it creates MARKER (any code could run there), then returns the
    # tiny model, so an eager row that unpickles it also runs.
    marker, evil = work / "code-ran", work / "evil.pt"
    code = (
        f"(__import__('pathlib').Path({str(marker)!r}).touch(), "
        f"__import__('torch').load({str(tiny / 'pickled.pt')!r}, weights_only=False))[1]"
    )

    class Payload:
        def __reduce__(self):
            return eval, (code,)

    torch.save(Payload(), evil)

    def grant(m: dict) -> None:
        m["source"] = {"path": str(evil), "sha256": sha256(evil), "kind": "pickle"}
        m["load"]["trust_pickle"] = True

    rewrite_manifest(art, grant)  # with a correct digest: the forger can recompute it
    [row] = _bench_rows(edgekit, art, work)
    assert row["not_applicable"], row
    assert "--trust-pickle" in row["reason"] and str(evil) in row["reason"], row["reason"]
    assert not marker.exists(), "the artifact's manifest made edgekit unpickle its source"

    [row] = _bench_rows(edgekit, art, work, "--trust-pickle")  # the user's own permission
    assert row["ok"], row
    assert marker.exists()


def test_manifest_cannot_choose_arch(edgekit, tiny, work):
    from artifacts import rewrite_manifest

    (work / "tinynet.py").write_text((tiny / "tinynet.py").read_text())
    art = work / "art"
    r = edgekit(
        "export", tiny / "weights.pt", "--arch", "tinynet:net", "--input-shape", SHAPE, "-o", art, cwd=work
    )
    assert r.returncode == 0, r.stderr
    marker = work / "imported"
    (work / "evilmod.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).touch()\nfrom tinynet import net\n"
    )
    rewrite_manifest(art, lambda m: m["load"].update(arch="evilmod:net"))
    [row] = _bench_rows(edgekit, art, work, cwd=work)
    assert row["not_applicable"], row
    assert "pass --arch evilmod:net" in row["reason"], row["reason"]
    assert not marker.exists(), "the artifact's manifest made edgekit import its module"

    [row] = _bench_rows(edgekit, art, work, "--arch", "tinynet:net", cwd=work)  # the user's choice
    assert row["ok"], row
    assert not marker.exists()


def test_arch_found_through_pythonpath_runs_in_the_worker(edgekit, tiny, work):
    """An --arch module the user's PYTHONPATH finds (not the working directory) is found by the
    benchmark worker too: the worker's path adds edgekit's source to the user's, not replaces it."""
    src = work / "src"
    src.mkdir()
    (src / "tinynet.py").write_text((tiny / "tinynet.py").read_text())
    env = edgekit.env(PYTHONPATH=str(src))
    art = work / "art"
    r = edgekit(
        "export", tiny / "weights.pt", "--arch", "tinynet:net", "--input-shape", SHAPE, "-o", art, env=env
    )
    assert r.returncode == 0, r.stderr
    [row] = _bench_rows(edgekit, art, work, "--arch", "tinynet:net", env=env)
    assert row["ok"], row


def test_edited_manifest(edgekit, tiny_artifact, work):
    import shutil

    art = shutil.copytree(tiny_artifact, work / "art")  # a copy to edit, not a second export
    manifest = art / "edgekit.json"
    m = json.loads(manifest.read_text())
    m["load"]["trust_pickle"] = True
    manifest.write_text(json.dumps(m, indent=2) + "\n")
    before = hashes_of(manifest)
    msg = assert_refused(edgekit("bench", art), work / "results", [manifest], before)
    assert str(manifest) in msg and "changed after edgekit wrote it" in msg and "rebuild" in msg, msg


def test_host_starting_with_dash(edgekit, tiny, work):
    art = work / "art"
    r = edgekit("export", tiny / "model.ts.pt", "--input-shape", SHAPE, "-o", art)
    assert r.returncode == 0, r.stderr
    bin_dir, ran = work / "bin", work / "ssh-ran"
    bin_dir.mkdir()
    (bin_dir / "ssh").write_text(f"#!/bin/sh\ntouch {ran}\nexit 255\n")
    (bin_dir / "ssh").chmod(0o755)
    env = edgekit.env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    hosts = work / "hosts.txt"
    hosts.write_text("pi@board\n-oProxyCommand=touch${IFS}pwned\n")
    for args in (("--host", "-Fevil@cfg"), ("--hosts", hosts)):
        msg = assert_refused(edgekit("bench", art, *args, env=env), work / "results")
        assert "starts with '-'" in msg and "ssh" in msg, msg
    assert not ran.exists(), "ssh ran with the hostile target"


def test_json_is_a_directory(edgekit, tiny_artifact, work):
    """Every output path is checked before the measuring starts, not after it."""
    r = edgekit("bench", tiny_artifact, "--runs", 3, "--json", work)
    msg = assert_refused(r, work / "never")
    assert str(work) in msg and "is a directory" in msg
    assert list(work.iterdir()) == []


def test_json_under_a_file(edgekit, tiny_artifact, work):
    blocker = work / "notes.txt"
    blocker.write_text("a file\n")
    out = blocker / "bench.json"
    msg = assert_refused(
        edgekit("bench", tiny_artifact, "--runs", 3, "--json", out), out, [blocker], hashes_of(blocker)
    )
    assert "notes.txt" in msg and "not a directory" in msg


def test_json_where_nothing_can_be_created(edgekit, tiny_artifact):
    out = Path("/proc/edgekit-test/bench.json")  # /proc refuses new entries even to root
    msg = assert_refused(edgekit("bench", tiny_artifact, "--runs", 3, "--json", out), out)
    assert str(out) in msg


def test_output_folder_is_an_existing_file(edgekit, tiny_artifact, work):
    existing = work / "results"
    existing.write_text("not a folder\n")
    before = hashes_of(existing)
    r = edgekit("bench", tiny_artifact, "--runs", 3, "-o", existing)
    msg = assert_refused(r, existing, [existing], before)
    assert "is an existing file" in msg


def test_json_with_a_missing_parent_is_written(edgekit, tiny_artifact, work):
    """A missing folder is not an error: it is created when the records are written."""
    out = work / "reports" / "ci" / "bench.json"
    r = edgekit("bench", tiny_artifact, "--runs", 3, "--warmup", 1, "--json", out)
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())[0]["ok"] is True
    assert sorted(p.name for p in out.parent.iterdir()) == ["bench.json"]  # no .tmp left


def test_measurement_options_out_of_range(edgekit, tiny_artifact, work):
    """--timeout 0 made every row "time out"; a timeout, time or count that cannot be measured with
    is one sentence naming the option, before any worker starts."""
    for args in (
        ("--timeout", "0"),
        ("--timeout", "-5"),
        ("--timeout", "nan"),
        ("--threads", "-1"),
        ("--warmup", "-1"),
        ("--runs", "0"),
        ("--seconds", "0"),
    ):
        r = edgekit("bench", tiny_artifact, *args, "--json", work / "out")
        assert args[0] in assert_refused(r, work / "out")


def test_eval_labels_outside_the_models_classes(edgekit, tiny_artifact, work):
    """Labels 1000 and -5 on a 3-class model gave "top-1 0.00 %" and exit 0: refused before any
    measurement, naming the label range found and the classes the model outputs; float labels too."""
    x = np.random.default_rng(0).standard_normal((20, 1, 16, 16)).astype(np.float32)
    np.savez(work / "far.npz", x=x, y=np.array([1000, -5] * 10))
    np.savez(work / "half.npz", x=x, y=np.full(20, 2.5))
    for name, named in (
        ("far.npz", ("from -5 to 1000", "outputs 3 classes")),
        ("half.npz", ("whole class numbers", "is 2.5")),
    ):
        data = work / name
        r = edgekit("bench", tiny_artifact, "--eval", data, "--runs", "1", "--json", work / "out.json")
        msg = assert_refused(r, work / "out.json", [data], hashes_of(data))
        assert str(data) in msg and all(part in msg for part in named)


def test_eval_size_below_one(edgekit, tiny_artifact, work):
    """--eval-size 0 used every sample and -3 all but three, silently."""
    x = np.random.default_rng(0).standard_normal((20, 1, 16, 16)).astype(np.float32)
    np.savez(work / "test.npz", x=x, y=np.arange(20) % 3)
    for value in ("0", "-3"):
        argv = ("bench", tiny_artifact, "--eval", work / "test.npz", "--eval-size", value)
        msg = assert_refused(edgekit(*argv, "--json", work / "out.json"), work / "out.json")
        assert "--eval-size" in msg and value in msg and "x>=1" in msg


def test_openvino_that_cannot_compile_the_model_is_a_failed_row_in_one_sentence(edgekit, work):
    """A Det node runs in ONNX Runtime but OpenVINO has no conversion for it: the openvino row
    failed with OpenVINO's stack of "Exception from src/..." lines; now a failed row whose error
    is one sentence naming the op, and the ort row is measured."""
    import onnx
    import pytest
    from onnx import TensorProto, helper, numpy_helper

    pytest.importorskip("openvino", reason="the openvino runtime is not installed")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Det", ["x"], ["det"]), helper.make_node("Unsqueeze", ["det", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "det", [x], [y], [axes])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), work / "det.onnx")
    r = edgekit("export", work / "det.onnx", "-o", work / "art")
    assert r.returncode == 0, r.stderr
    argv = ("--runtime", "ort,openvino", "--runs", 1, "--warmup", 0, "--json", work / "r.json")
    r = edgekit("bench", work / "art", *argv)
    assert r.returncode == 1 and "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    ort_row, ov_row = json.loads((work / "r.json").read_text())
    assert ort_row["ok"] is True and ov_row["ok"] is False
    assert ov_row["error"] == (
        "RuntimeFailure: OpenVINO could not compile model.onnx for cpu: "
        "No conversion rule found for operations: Det-18."
    )
