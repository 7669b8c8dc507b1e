"""`edgekit search` on a real two-node Ray cluster on 127.0.0.1 (head + one worker node, one CPU
each, started by Ray's own test utility), through the real CLI: trials run on both nodes, the front
equals a local run's, a killed worker's trial is retried, Ctrl-C keeps what finished and a rerun
re-runs none of it, a dead address is one sentence, --apply and report work. The model is a small
ONNX classifier, labelled by its own fp32 predictions, so accuracy is measured on real outputs."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="edgekit search needs Ray: pip install 'edgekit[ray]'")
pytestmark = pytest.mark.xdist_group("ray")  # one cluster per module, on one xdist worker

CONFIG = """\
# the search test's config; --apply adds a variant under variants:, this comment stays
model:
  path: classifier.onnx
data:
  calibration: calib.npz
  calib_size: 32
  evaluation: eval.npz
variants:
  fp32: []
targets:
  - name: cpu
    variants: [fp32]
    seconds: 0.3
    rounds: 3
    warmup: 2
search:
  target: cpu
  space:
    precision: [fp32, int8]
    int8.calibration: [minmax, percentile]
    int8.per_channel: [true, false]
  objectives: [accuracy, size]
  eval_share: {share}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The classifier, 132 calibration and 96 evaluation images labelled by its fp32 top-1."""
    import onnxruntime as ort

    from tests.models import margin_classifier, smooth_images

    root = tmp_path_factory.mktemp("search")
    margin_classifier(root / "classifier.onnx")
    sess = ort.InferenceSession(str(root / "classifier.onnx"), providers=["CPUExecutionProvider"])
    for name, n, seed in (("calib", 132, 1), ("eval", 96, 2)):
        x = smooth_images(n, seed=seed)
        np.savez(root / f"{name}.npz", x=x, y=sess.run(None, {"x": x})[0].argmax(1))
    return root


def _config(root: Path, name: str, share: int, plain_int8: bool = False) -> Path:
    """CONFIG at ROOT/NAME; PLAIN_INT8: every candidate without AdaRound and the range search, and
    per-channel only (one value each: the search is under test, not INT8; the two-node test's two
    searches of 3 candidates, not 5)."""
    path = root / name
    text = CONFIG.format(share=share)
    if plain_int8:
        fixed = "    int8.adaround: [false]\n    int8.range_search: [false]\n  objectives:"
        text = text.replace("  objectives:", fixed)
        text = text.replace("per_channel: [true, false]", "per_channel: [true]")
    path.write_text(text)
    return path


# Ray's test utility for a multi-node cluster on one machine, in a process of its own (Ray reads its
# auth mode when imported, so the nodes and every client get RAY_AUTH_MODE from one environment); it
# prints the address and shuts the nodes down when its stdin closes
CLUSTER = """
import sys
from ray.cluster_utils import Cluster
c = Cluster(initialize_head=True, connect=False, head_node_args={
    "num_cpus": 1, "resources": {"edgekit_device_cpu": 1}, "include_dashboard": False})
c.add_node(num_cpus=1)
print(c.address, flush=True)
sys.stdin.read()
c.shutdown()
"""


@pytest.fixture(scope="module")
def cluster(edgekit):
    """Head + one worker node on this machine, one CPU each; the head holds the timing device."""
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", CLUSTER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_env(edgekit),
        text=True,
    )
    address = proc.stdout.readline().strip()
    assert address, "the Ray cluster did not start"
    # the nodes inherit the pipe: left undrained, a node that wrote 64 KiB to it would block
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    yield address
    proc.stdin.close()
    proc.wait(timeout=60)


# the cluster's token, given to the nodes and every client (without one, token mode needs a file in
# ~/.ray that a fresh machine does not have)
TOKEN = secrets.token_hex(32)


def _env(edgekit) -> dict:
    return edgekit.env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _front(out: Path) -> dict:
    summary = json.loads((out / "search.json").read_text())
    return {r["name"]: (r["accuracy_loss"], r["size_mb"]) for r in summary["candidates"] if r["on_front"]}


# two Ray instances (the cluster's and the local run's), a dozen processes that each wait on the
# others: ~45 s alone, 300-500 s beside the default suite's other worker (2 cores), the suite's longest
@pytest.mark.slow
def test_search_on_two_nodes_matches_a_local_run(project, cluster, edgekit):
    cfg = _config(project, "split.yaml", share=40, plain_int8=True)  # 96 samples: 3 shards a candidate
    two = edgekit("search", cfg, "-o", project / "two", "--ray-address", cluster, env=_env(edgekit))
    assert two.returncode == 0, two.stderr
    assert "2 node(s)" in two.stdout
    records = _records(project / "two")
    # fp32 + (minmax, percentile) int8; precision fp32 makes the int8 keys moot
    assert len(records) == 3 and all(r["status"] == "ok" for r in records)
    nodes = {r["build_node"] for r in records} | {n for r in records for n in r["eval_nodes"]}
    assert len(nodes) == 2, "the trials ran on one node only"
    assert all(r["eval_shards"] == 3 for r in records)
    # one process, whole evaluation set in one task: the same candidates, numbers and front
    whole = _config(project, "whole.yaml", share=1000, plain_int8=True)
    one = edgekit("search", whole, "-o", project / "one", env=_env(edgekit))
    assert one.returncode == 0, one.stderr
    by_key = {r["key"]: r for r in _records(project / "one")}
    assert set(by_key) == {r["key"] for r in records}
    for r in records:
        assert r["accuracy_loss"] == by_key[r["key"]]["accuracy_loss"]
        assert r["quality"]["fidelity"] == by_key[r["key"]]["quality"]["fidelity"]
    assert _front(project / "two") == _front(project / "one")
    # scored apart: on an AVX2-only CPU both INT8 candidates lost the same top-1 share, not the same SQNR
    scores = {json.dumps([r["accuracy_loss"], r["quality"]["fidelity"]], sort_keys=True) for r in records}
    assert len(scores) > 2, "the candidates scored alike: the test shows nothing"
    _apply_and_report(project, cfg, edgekit)


def _apply_and_report(project: Path, cfg: Path, edgekit) -> None:
    """--apply writes a front candidate into the config as a variant (once); report plots the front."""
    name = json.loads((project / "two" / "search.json").read_text())["front"][0]
    done = edgekit("search", cfg, "-o", project / "two", "--apply", name)
    assert done.returncode == 0, done.stderr
    text = cfg.read_text()
    assert text.startswith("# the search test's config") and f"  {name}:" in text
    from edgekit.config import load

    assert name in load(cfg).variants
    again = edgekit("search", cfg, "-o", project / "two", "--apply", name)
    assert again.returncode == 2 and "already has a variant" in again.stderr
    assert cfg.read_text() == text
    report = edgekit("report", project / "two", "--plot")
    assert report.returncode == 0, report.stderr
    assert name in report.stdout and (project / "two" / "search.png").stat().st_size > 0


def _wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _build_pids() -> list[int]:
    """Ray workers running a candidate build (Ray titles a worker by its task: ray::_build)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:] if line.split()[1:2] == ["ray::_build"]]


@pytest.mark.slow  # a whole search or trial run on the cluster: 30-90 s (make test-slow)
def test_a_killed_worker_is_retried_and_the_search_completes(project, cluster, edgekit):
    cfg = _config(project, "kill.yaml", share=1000)
    proc = subprocess.Popen(
        edgekit.argv("search", cfg, "-o", project / "kill", "--ray-address", cluster),
        env=_env(edgekit),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(_build_pids, 120, "a candidate build")
    os.kill(_build_pids()[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    records = _records(project / "kill")
    assert len(records) == 5 and all(r["status"] == "ok" for r in records)


@pytest.mark.slow  # a whole search or trial run on the cluster: 30-90 s (make test-slow)
def test_ctrl_c_keeps_finished_candidates_and_a_rerun_resumes(project, edgekit):
    cfg = _config(project, "resume.yaml", share=1000)  # 9 candidates: bias correction on and off too
    more = "    int8.per_channel: [true, false]\n    int8.bias_correction: [true, false]\n"
    cfg.write_text(cfg.read_text().replace("    int8.per_channel: [true, false]\n", more))
    out = project / "resume"
    proc = subprocess.Popen(
        edgekit.argv("search", cfg, "-o", out),
        env=_env(edgekit),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as from a terminal: an xdist worker ignores SIGINT, and a child inherits that (Python then
        # installs no KeyboardInterrupt handler), so the disposition is reset before the exec
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    results = out / "results.jsonl"
    _wait_for(lambda: results.exists() and len(results.read_text().splitlines()) >= 2, 300, "2 candidates")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    before = _records(out)
    assert 2 <= len(before) < 9
    again = edgekit("search", cfg, "-o", out, env=_env(edgekit))
    assert again.returncode == 0, again.stderr
    assert f"{len(before)} finished before" in again.stdout
    after = _records(out)
    assert after[: len(before)] == before  # kept as they were
    keys = [r["key"] for r in after]
    assert len(keys) == len(set(keys)) == 9  # nothing finished ran again
    other = project / "other.yaml"  # fewer evaluation samples: not the data these results came from
    other.write_text(
        cfg.read_text().replace("  evaluation: eval.npz\n", "  evaluation: eval.npz\n  eval_size: 50\n")
    )
    refused = edgekit("search", other, "-o", out, env=_env(edgekit))
    assert refused.returncode == 2 and "holds a search of another model, data or target" in refused.stderr
    assert _records(out) == after


def test_a_dead_cluster_address_is_one_sentence(project, edgekit):
    cfg = _config(project, "dead.yaml", share=1000)
    done = edgekit("search", cfg, "-o", project / "dead", "--ray-address", "127.0.0.1:9", env=_env(edgekit))
    assert done.returncode == 2
    assert done.stderr.startswith("edgekit: error: --ray-address 127.0.0.1:9: no Ray cluster there")
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (project / "dead").exists()


@pytest.mark.slow  # a whole search or trial run on the cluster: 30-90 s (make test-slow)
def test_sensitivity_on_the_cluster_equals_the_in_process_table(project, cluster, edgekit):
    args = ("sensitivity", project / "classifier.onnx", "--calib", project / "calib.npz", "--calib-size", 32)
    args += ("--eval", project / "eval.npz")
    here = edgekit(*args, "--json", project / "s_here.json")
    assert here.returncode == 0, here.stderr
    there = edgekit(*args, "--json", project / "s_ray.json", "--ray-address", cluster, env=_env(edgekit))
    assert there.returncode == 0, there.stderr
    a, b = (json.loads((project / f).read_text()) for f in ("s_here.json", "s_ray.json"))
    drop = ("node", "sensitivity_points", "drop_points_when_restored", "sqnr_db_when_restored")
    assert [{k: r[k] for k in drop} for r in a["layers"]] == [{k: r[k] for k in drop} for r in b["layers"]]
    assert a["full_int8"] == b["full_int8"]


@pytest.mark.slow  # a whole search or trial run on the cluster: 30-90 s (make test-slow)
def test_max_accuracy_drop_on_the_cluster_scores_every_trial_alike(project, cluster, edgekit, tmp_path):
    """Full INT8 loses accuracy here, so the budget 0 needs the per-layer trials."""
    args = ("compress", project / "classifier.onnx", "--int8", "--calib", project / "calib.npz")
    args += ("--calib-size", 32, "--eval", project / "eval.npz", "--max-accuracy-drop", 0)
    here = edgekit(*args, "-o", tmp_path / "here")
    there = edgekit(*args, "-o", tmp_path / "ray", "--ray-address", cluster, env=_env(edgekit))
    assert here.returncode == there.returncode, here.stderr + there.stderr
    assert here.returncode in (0, 1), here.stderr  # 1: the budget not met, the best written
    a, b = (json.loads((tmp_path / d / "edgekit.json").read_text()) for d in ("here", "ray"))
    mixed_a, mixed_b = (next(p for p in m["passes"] if p["name"] == "mixed")["summary"] for m in (a, b))
    assert mixed_a["full_int8_drop_points"] == mixed_b["full_int8_drop_points"] > 0
    scored = [
        {(tuple(c["kept_fp32"]), c["drop_points"]) for c in m["candidates"]} for m in (mixed_a, mixed_b)
    ]
    assert scored[0] == scored[1]


@pytest.mark.slow  # a whole search or trial run on the cluster: 30-90 s (make test-slow)
def test_optuna_proposes_its_samples_and_a_rerun_continues_the_study(project, edgekit):
    cfg = project / "optuna.yaml"
    text = CONFIG.format(share=1000).replace(
        "  objectives:", "  algorithm: optuna\n  samples: 2\n  objectives:"
    )
    cfg.write_text(
        text.replace("int8.per_channel: [true, false]", "int8.percentile: {low: 99.9, high: 99.999}")
    )
    out = project / "optuna"
    first = edgekit("search", cfg, "-o", out, env=_env(edgekit))
    assert first.returncode == 0, first.stderr
    assert "2 candidates to sample (optuna), 0 finished before" in first.stdout
    records = _records(out)  # the fp32 baseline, then a line per sample (a chain proposed again too)
    assert len(records) == 3 and records[0]["point"] == {}
    assert all(set(r["point"]) == {"precision", "int8.calibration", "int8.percentile"} for r in records[1:])
    again = edgekit("search", cfg, "-o", out, env=_env(edgekit))
    assert again.returncode == 0, again.stderr
    assert "2 finished before" in again.stdout and _records(out) == records
