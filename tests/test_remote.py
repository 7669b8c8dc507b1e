"""`edgekit bench --host/--hosts`: benchmarks on a device over ssh, end to end through the real CLI
against a throw-away OpenSSH server on 127.0.0.1 (tests/sshd.py), on the tiny artifacts of
tests/artifacts.py. The "device" is this machine: its Python is this venv's (the system python3
has no numpy), its cache a temporary directory, so nothing is left in ~/.cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from artifacts import tiny_pair
from sshd import ALIAS, WRONG_KEY_ALIAS, free_port, sshd

from edgekit.benchmarks import fingerprint
from edgekit.errors import EdgekitError
from edgekit.runtimes.remote import Target, parse_target

DEVICE = f"ssh://{ALIAS}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with sshd(tmp_path_factory.mktemp("sshd")) as s:
        yield s


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_pair(tmp_path_factory.mktemp("tiny"))


def _bench(edgekit, server, tmp_path, *args, python=sys.executable, cache=None) -> tuple[object, list[dict]]:
    """`edgekit bench ARGS` over ssh with the test server's client config; the records."""
    out = tmp_path / "records.json"
    remote = ("--ssh-config", server.client_config, "--remote-python", python)
    cache = ("--remote-cache", cache or tmp_path / "device-cache")
    proc = edgekit("bench", *args, *remote, *cache, "--runs", 20, "--warmup", 2, "--json", out, timeout=240)
    assert out.is_file(), proc.stdout + proc.stderr
    return proc, json.loads(out.read_text())


def _failed(proc, records: list[dict]) -> str:
    """The one failed row's error, after checking the run failed without a traceback and says it."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert len(records) == 1 and records[0]["ok"] is False, records
    assert records[0]["error"][:40] in " ".join(proc.stdout.split()), proc.stdout
    return records[0]["error"]


def test_a_remote_row_is_a_local_row_measured_on_the_device(edgekit, server, tiny, tmp_path):
    local_json = tmp_path / "local.json"
    local = edgekit(
        "bench", tiny.fp32, "--eval", tiny.eval, "--runs", 20, "--warmup", 2, "--json", local_json
    )
    assert local.returncode == 0, local.stdout + local.stderr
    [here] = json.loads(local_json.read_text())
    proc, [there] = _bench(edgekit, server, tmp_path, tiny.fp32, "--eval", tiny.eval, "--host", ALIAS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert there["ok"] is True and there["latency"]["count"] == 20 and there["latency"]["median_ms"] > 0
    assert set(there) - set(here) == {"remote"} and set(here) <= set(there)
    assert set(there["memory_mb"]) == set(here["memory_mb"]) and there["memory_mb"]["load_delta"] > 0
    assert set(there["host"]) == set(here["host"])
    assert (here["host_target"], there["host_target"]) == ("local", DEVICE)
    assert there["accuracy"]["metric"] == here["accuracy"]["metric"]
    assert there["accuracy"]["top1"] == here["accuracy"]["top1"] == 1.0  # the labels are fp32's own top-1
    assert there["remote"]["copied_bytes"] > 0 and there["remote"]["python"] == sys.executable
    assert f"edgekit bench on {DEVICE}" in proc.stdout


def test_a_second_run_copies_nothing(edgekit, server, tiny, tmp_path):
    cache = tmp_path / "device-cache"
    _, [first] = _bench(edgekit, server, tmp_path, tiny.int8, "--host", server.url, cache=cache)
    _, [second] = _bench(edgekit, server, tmp_path, tiny.int8, "--host", server.url, cache=cache)
    assert first["ok"] and second["ok"], (first, second)
    assert first["remote"]["copied_bytes"] > first["size_bytes"]  # the model, the code and the inputs
    assert second["remote"]["copied_bytes"] == 0
    assert sorted(p.name for p in cache.iterdir()) == ["artifacts", "code", "inputs", "runs"]


def test_hosts_file_measures_each_host_in_parallel_with_rows_per_host(edgekit, server, tiny, tmp_path):
    hosts = tmp_path / "hosts.txt"
    hosts.write_text(f"# the lab\n{ALIAS}\n\n{server.url}  # the same board by address\n")
    proc, records = _bench(edgekit, server, tmp_path, tiny.fp32, tiny.int8, "--hosts", hosts)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(r["host_target"], Path(r["artifact"]).name) for r in records] == [
        (DEVICE, "tiny-fp32"),
        (DEVICE, "tiny-int8"),
        (server.url, "tiny-fp32"),
        (server.url, "tiny-int8"),
    ]
    assert all(r["ok"] for r in records), records
    assert f"edgekit bench on {DEVICE}" in proc.stdout and f"edgekit bench on {server.url}" in proc.stdout


def test_an_unreachable_host_is_a_failed_row_naming_it(edgekit, server, tiny, tmp_path):
    closed = f"ssh://{server.user}@127.0.0.1:{free_port()}"
    error = _failed(*_bench(edgekit, server, tmp_path, tiny.fp32, "--host", closed))
    assert error.startswith(f"{closed} is unreachable") and "Connection refused" in error, error


def test_a_key_the_device_does_not_accept_is_an_authentication_failure(edgekit, server, tiny, tmp_path):
    error = _failed(*_bench(edgekit, server, tmp_path, tiny.fp32, "--host", WRONG_KEY_ALIAS))
    assert error.startswith(f"ssh to ssh://{WRONG_KEY_ALIAS} failed authentication"), error
    assert "Permission denied" in error and "authorized_keys" in error


def test_no_python_on_the_device(edgekit, server, tiny, tmp_path):
    proc, records = _bench(
        edgekit, server, tmp_path, tiny.fp32, "--host", ALIAS, python="/nonexistent/python3"
    )
    error = _failed(proc, records)
    assert error.startswith(f"/nonexistent/python3 was not found on {DEVICE}") and "--remote-python" in error


@pytest.fixture(scope="module")
def python_without_onnxruntime(tmp_path_factory) -> Path:
    """A venv of this Python that has numpy (this venv's, linked in with its metadata) and nothing else."""
    root = tmp_path_factory.mktemp("bare-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", root], check=True)
    site = Path(np.__file__).parents[1]
    [target] = (root / "lib").glob("python3*/site-packages")
    for path in [site / "numpy", *site.glob("numpy.libs"), *site.glob("numpy-*.dist-info")]:
        (target / path.name).symlink_to(path)
    return root / "bin" / "python"


def test_a_runtime_missing_on_the_device_says_what_to_install_there(
    edgekit, server, tiny, tmp_path, python_without_onnxruntime
):
    python = str(python_without_onnxruntime)
    proc, records = _bench(edgekit, server, tmp_path, tiny.fp32, "--host", ALIAS, python=python)
    error = _failed(proc, records)
    assert error.startswith(f"onnxruntime is not installed for {python} on {DEVICE}"), error
    assert "pip install onnxruntime" in error
    device = records[0]["host"]  # the fingerprint the worker took there, not this venv's
    assert device["python_executable"] == python
    assert "numpy" in device["libraries"] and "onnxruntime" not in device["libraries"]


def test_eager_over_ssh_is_not_applicable(edgekit, server, tiny, tmp_path):
    proc, [row] = _bench(edgekit, server, tmp_path, tiny.fp32, "--host", ALIAS, "--runtime", "eager")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert row["not_applicable"] is True and "torch on the device" in row["reason"], row
    assert row["host"] == {"target": DEVICE}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--host", "ssh://pi@board:99999"), "--host 'ssh://pi@board:99999' is not an ssh target"),
        (("--host", "-oProxyCommand=x"), "--host '-oProxyCommand=x' starts with '-', which ssh would read"),
        (("--hosts", "no-such-hosts.txt"), "--hosts no-such-hosts.txt does not exist"),
        (("--host", "pi@board", "--ssh-option", "Port"), "--ssh-option 'Port' must be KEY=VALUE"),
    ],
)
def test_a_bad_host_option_is_one_sentence_and_exit_2(edgekit, tiny, tmp_path, args, message):
    proc = edgekit("bench", tiny.fp32, *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("edgekit: error: ") and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("ssh://pi@raspberrypi", Target("raspberrypi", "pi")),
        ("ssh://nvidia@jetson.local:2222/", Target("jetson.local", "nvidia", 2222)),
        ("ubuntu@10.0.0.7", Target("10.0.0.7", "ubuntu")),
        ("orin-lab", Target("orin-lab")),  # an ~/.ssh/config alias
    ],
)
def test_ssh_targets(text, target):
    assert parse_target(text) == target


def test_bare_host_with_port_is_refused_with_the_url_form():
    with pytest.raises(EdgekitError, match="ssh://user@host"):
        parse_target("pi@board:22")


def test_jetson_facts_from_its_files(tmp_path):
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan 8\n"
    )
    board = fingerprint._board(tmp_path)
    assert board["model"] == "NVIDIA Jetson Orin Nano Developer Kit"
    assert board["l4t"] == "36.4.3"
    assert board["power_mode"]  # the mode, or why nvpmodel could not say
    assert fingerprint.power_mode("NV Power Mode: MAXN_SUPER\n2\n") == "MAXN_SUPER"
    assert fingerprint._board(tmp_path / "a-pc") is None  # no device tree, no Jetson release
