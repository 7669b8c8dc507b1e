"""Benchmark on a device over ssh, with the user's own OpenSSH client and config (keys, agent,
~/.ssh/config aliases, ProxyJump).

The worker's code, the model files and the input .npz files are copied into a cache on the device
(`~/.cache/edgekit-remote`: code/<sha256>/, artifacts/<sha256>/, inputs/<sha256>.npz), each under
a name that is the sha256 of its content, so a second run copies nothing. The worker then runs there
with the device's own Python (numpy and the runtime's library, no torch, no edgekit install) and
returns the same result as a local worker, with the device's fingerprint. Every failure is a
failed row whose error names the host and what to do.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import shlex
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.files import read_text

PACKAGE = Path(__file__).resolve().parents[1]
# What the worker imports: stdlib, numpy and the runtime's own library; nothing else of edgekit.
SHIPPED = (
    "__init__.py",
    "errors.py",  # runtimes.get imports it
    "batching.py",
    "benchmarks/__init__.py",
    "benchmarks/worker.py",
    "benchmarks/energy.py",
    "benchmarks/metrics.py",
    "benchmarks/gpu.py",
    "benchmarks/fingerprint.py",
    "runtimes/__init__.py",
    "runtimes/ort.py",
    "runtimes/ov.py",
    "runtimes/trt.py",
)  # not eager: it runs the source torch model, which is never on the device
DEFAULT_CACHE = '"${XDG_CACHE_HOME:-$HOME/.cache}/edgekit-remote"'  # expanded by the device's shell
MIN_PYTHON = (3, 10)
CONNECT_TIMEOUT = 10
# How to add a runtime's library on a device (edgekit's own extras are not installed there).
DEVICE_INSTALL = {
    "ort": (
        "onnxruntime",
        "pip install onnxruntime (on a Jetson, the onnxruntime-gpu wheel for its JetPack)",
    ),
    "openvino": ("openvino", "pip install openvino"),
    "tensorrt": (
        "tensorrt",
        "TensorRT's Python bindings come with JetPack on a Jetson (pip install tensorrt elsewhere)",
    ),
}
UNREACHABLE = (
    "Connection refused",
    "timed out",
    "Could not resolve hostname",
    "Name or service not known",
    "No route to host",
    "Network is unreachable",
)
# Extracts a tar stream from stdin into the cache, each top-level item renamed into place whole:
# a copy cut short leaves only a temporary directory, and a parallel copy of the same item is harmless.
INSTALL = """
import os, shutil, sys, tarfile, tempfile
cache = sys.argv[1]
tmp = tempfile.mkdtemp(prefix=".incoming-", dir=cache)
try:
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    for kind in os.listdir(tmp):
        os.makedirs(os.path.join(cache, kind), exist_ok=True)
        for name in os.listdir(os.path.join(tmp, kind)):
            try:
                os.rename(os.path.join(tmp, kind, name), os.path.join(cache, kind, name))
            except OSError:
                pass  # already there: a parallel copy of the same content won
finally:
    shutil.rmtree(tmp, ignore_errors=True)
"""


class RemoteError(EdgekitError):
    """A remote step failed; the message is the row's error."""


@dataclass(frozen=True)
class Target:
    """An ssh destination: ssh://[user@]host[:port], user@host, or an ~/.ssh/config alias."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        at = f"{self.user}@{self.host}" if self.user else self.host
        return f"ssh://{at}:{self.port}" if self.port else f"ssh://{at}"

    @property
    def destination(self) -> str:
        """What to type after `ssh` (with -p PORT where there is one)."""
        return f"{self.user}@{self.host}" if self.user else self.host


BARE = re.compile(r"(?:(?P<user>[\w.][\w.-]*)@)?(?P<host>[A-Za-z0-9_][\w.-]*|\[[0-9A-Fa-f:.]+\])")
URL = re.compile(
    r"ssh://(?:(?P<user>[\w.][\w.-]*)@)?(?P<host>[A-Za-z0-9_][\w.-]*|\[[0-9A-Fa-f:.]+\])(?::(?P<port>\d+))?/?"
)


def parse_target(text: str, where: str = "--host") -> Target:
    """A --host value (or a --hosts line, WHERE naming it) as a Target; one sentence saying what is
    accepted otherwise. A target that starts with '-' is refused: ssh would read it as an option
    (-F FILE, -oProxyCommand=...)."""
    text = text.strip()
    if text.startswith("-"):
        raise EdgekitError(
            f"{where} {text!r} starts with '-', which ssh would read as an option, not a host; use "
            "ssh://user@host[:port], user@host or a Host alias from your ssh config."
        )
    m = (URL if text.startswith("ssh://") else BARE).fullmatch(text)
    port = int(m["port"]) if m and m.groupdict().get("port") else None
    if not m or (port is not None and not 0 < port < 65536):
        raise EdgekitError(
            f"{where} {text!r} is not an ssh target; use ssh://user@host[:port], user@host or a Host "
            "alias from your ssh config."
        )
    return Target(host=m["host"], user=m["user"], port=port)


def read_hosts(path: Path) -> list[Target]:
    """The targets in a --hosts file: one a line; blank lines and # comments are skipped."""
    lines = read_text(path, "--hosts").splitlines()
    targets = [
        parse_target(x.split("#", 1)[0], f"--hosts {path} line {n}:")
        for n, x in enumerate(lines, 1)
        if x.split("#", 1)[0].strip()
    ]
    if not targets:
        raise EdgekitError(f"--hosts {path} lists no host; write one ssh target a line.")
    return targets


def remotes(host: str | None, hosts: Path | None, **settings) -> list[Remote]:
    """The devices of --host and --hosts (in that order; none: measure here), each with SETTINGS
    (python, cache, ssh_config, ssh_options); a bad target or ssh option fails in one sentence."""
    for opt in settings.get("ssh_options", ()):
        if not re.fullmatch(r"\w+=.+", opt):
            raise EdgekitError(
                f"--ssh-option {opt!r} must be KEY=VALUE, e.g. --ssh-option ProxyJump=gateway."
            )
    targets = ([parse_target(host)] if host else []) + (read_hosts(hosts) if hosts else [])
    return [Remote(t, **settings) for t in targets]


@dataclass(frozen=True)
class Remote:
    """A device to run workers on, and how to reach it: the ssh options and the device's Python."""

    target: Target
    python: str = "python3"
    cache: str | None = None  # None: ~/.cache/edgekit-remote on the device
    ssh_config: Path | None = None
    ssh_options: tuple[str, ...] = ()
    connect_timeout: int = CONNECT_TIMEOUT
    status: Callable[[str], None] = field(default=lambda _: None, compare=False)

    def run(self, job: dict, artifact: Path, files: list[tuple[str, str]], timeout: float) -> dict:
        """Run a worker JOB (local paths) on the device: copy what is missing, run, bring the eval
        outputs back to the job's local path. FILES: the artifact's (name, sha256). A failure is a
        failed row whose error names the host and what to do."""
        try:
            return self._run(job, artifact, files, timeout)
        except RemoteError as e:
            return {"ok": False, "error": str(e)}
        except subprocess.TimeoutExpired:
            return {"ok": False, "error": f"timed out after {timeout:g} s"}

    def _run(self, job: dict, artifact: Path, files: list[tuple[str, str]], timeout: float) -> dict:
        code_sha, code = code_bundle()
        art = (
            "artifacts/"
            + hashlib.sha256("\n".join(sorted(f"{n} {s}" for n, s in files)).encode()).hexdigest()
        )
        inputs = {k: f"inputs/{npz_sha(Path(job[k]))}.npz" for k in ("feeds", "eval_inputs") if job.get(k)}
        self.status("connecting")
        cache, version, have = self._probe([f"code/{code_sha}", art, *inputs.values()])
        payload = []
        if f"code/{code_sha}" not in have:
            payload += [(f"code/{code_sha}/edgekit/{name}", data) for name, data in code]
        if art not in have:
            payload += [(f"{art}/{name}", artifact / name) for name, _ in files]
        payload += [(dest, Path(job[k])) for k, dest in inputs.items() if dest not in have]
        copied = self._copy(cache, payload) if payload else 0
        remote_job = {
            **job,
            "model": f"{cache}/{art}/{Path(job['model']).name}",
            **{k: f"{cache}/{dest}" for k, dest in inputs.items()},
            "timeout": timeout,
        }
        if job.get("eval_outputs"):
            remote_job["eval_outputs"] = f"{cache}/runs/{uuid.uuid4().hex}.npz"
        self.status("measuring")
        result = self._worker(f"{cache}/code/{code_sha}", remote_job, timeout)
        if result.get("ok") and job.get("eval_outputs"):
            self.status("fetching the evaluation outputs")
            Path(job["eval_outputs"]).write_bytes(self._fetch(remote_job["eval_outputs"]))
            result["eval_outputs"] = job["eval_outputs"]
        result["remote"] = {
            "host": str(self.target),
            "python": self.python,
            "python_version": version,
            "cache": cache,
            "copied_bytes": copied,
        }
        return result

    def fingerprint(self, timeout: float = 120) -> dict:
        """The device's fingerprint (its CPU class included), taken there by the worker: what
        `compress --host` makes the INT8 form for."""
        code_sha, code = code_bundle()
        cache, _, have = self._probe([f"code/{code_sha}"])
        if f"code/{code_sha}" not in have:
            self._copy(cache, [(f"code/{code_sha}/edgekit/{name}", data) for name, data in code])
        return self._worker(f"{cache}/code/{code_sha}", {"fingerprint": True}, timeout)["host"]

    def argv(self, script: str) -> list[str]:
        """`ssh` with the user's config, never prompting, running SCRIPT in the device's sh."""
        cmd = ["ssh", "-o", "BatchMode=yes"]
        if self.ssh_config:
            cmd += ["-F", str(self.ssh_config)]
        for opt in self.ssh_options:
            cmd += ["-o", opt]
        cmd += ["-o", f"ConnectTimeout={self.connect_timeout}"]
        if self.target.port:
            cmd += ["-p", str(self.target.port)]
        return [*cmd, "--", self.target.destination, "sh -c " + shlex.quote(script)]

    def _ssh(
        self, script: str, data: bytes | BinaryIO = b"", timeout: float = 120
    ) -> subprocess.CompletedProcess:
        """Run SCRIPT on the device with DATA (bytes or a file) on its stdin; an ssh failure (exit
        255) or a full disk raises its sentence."""
        stdin = {"input": data} if isinstance(data, bytes) else {"stdin": data}
        try:
            proc = subprocess.run(self.argv(script), capture_output=True, timeout=timeout, **stdin)
        except FileNotFoundError:
            raise RemoteError(
                "ssh is not installed here; install the OpenSSH client (apt install openssh-client)."
            ) from None
        stderr = proc.stderr.decode(errors="replace")
        if proc.returncode == 255:
            raise RemoteError(ssh_failure(self.target, stderr))
        if "No space left on device" in stderr:
            raise RemoteError(self._disk_full())
        return proc

    def _probe(self, items: list[str]) -> tuple[str, str, set[str]]:
        """One call: the device's Python (and its version), the cache's absolute path, which ITEMS
        it already holds."""
        py = device_path(self.python)
        script = (
            f"c={device_path(self.cache) if self.cache else DEFAULT_CACHE}; "
            f'command -v {py} >/dev/null 2>&1 || exit 127; mkdir -p "$c/runs" && cd "$c" && pwd && '
            f"{py} -c 'import sys; print(\"%d.%d.%d\" % sys.version_info[:3])' && "
            f'for p in {" ".join(map(shlex.quote, items))}; do [ -e "$p" ] && echo "$p"; done; true'
        )
        proc = self._ssh(script)
        lines = proc.stdout.decode(errors="replace").splitlines()
        if proc.returncode in (126, 127):
            raise RemoteError(
                f"{self.python} was not found on {self.target}; install Python 3 there, or give the "
                "device's Python with --remote-python PATH."
            )
        if proc.returncode != 0 or len(lines) < 2:
            raise RemoteError(self._failed("setting up", proc))
        cache, version = lines[0], lines[1]
        if tuple(map(int, version.split(".")[:2])) < MIN_PYTHON:
            raise RemoteError(
                f"{self.python} on {self.target} is Python {version}; the worker needs Python "
                f"{'.'.join(map(str, MIN_PYTHON))} or newer: install one there and give it with "
                "--remote-python PATH."
            )
        return cache, version, set(lines[2:])

    def _copy(self, cache: str, payload: list[tuple[str, bytes | Path]]) -> int:
        """Send PAYLOAD (cache-relative name, bytes or a local file) as one tar stream; the bytes sent."""
        with tempfile.TemporaryFile() as stream:
            with tarfile.open(fileobj=stream, mode="w") as tar:
                for name, data in payload:
                    if isinstance(data, Path):
                        tar.add(data, arcname=name)
                    else:
                        info = tarfile.TarInfo(name)
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
            size = stream.tell()
            stream.seek(0)
            self.status(f"copying {size / 1e6:.1f} MB")
            script = f"{device_path(self.python)} -c {shlex.quote(INSTALL)} {shlex.quote(cache)}"
            proc = self._ssh(script, stream, timeout=max(120, size / 1e6))  # ≥ 1 MB/s
        if proc.returncode != 0:
            raise RemoteError(self._failed("copying files", proc))
        return size

    def _worker(self, code_dir: str, job: dict, timeout: float) -> dict:
        """Run the worker in CODE_DIR on the device; its result, or the failure as one sentence."""
        py = device_path(self.python)
        script = f"cd {shlex.quote(code_dir)} && PYTHONPATH=. exec {py} -m edgekit.benchmarks.worker"
        proc = self._ssh(script, json.dumps(job).encode(), timeout=timeout + 2 * self.connect_timeout)
        stderr = proc.stderr.decode(errors="replace")
        lines = proc.stdout.decode(errors="replace").strip().splitlines()
        if "No module named 'numpy'" in stderr:
            raise RemoteError(
                f"numpy is not installed for {self.python} on {self.target}; install it there: "
                f"{self.python} -m pip install numpy."
            )
        if proc.returncode != 0 or not lines:
            raise RemoteError(self._failed("running the worker", proc))
        result = json.loads(lines[-1])
        if result.get("missing_runtime") in DEVICE_INSTALL:
            library, how = DEVICE_INSTALL[result["missing_runtime"]]
            result["error"] = (
                f"{library} is not installed for {self.python} on {self.target}; install it there: {how}."
            )
        elif "No space left on device" in result.get("error", ""):
            result["error"] = self._disk_full()
        return result

    def _fetch(self, path: str) -> bytes:
        """A file the worker wrote on the device (removed there once read)."""
        proc = self._ssh(f"cat {shlex.quote(path)} && rm -f {shlex.quote(path)}")
        if proc.returncode != 0:
            raise RemoteError(self._failed("fetching the evaluation outputs", proc))
        return proc.stdout

    def _disk_full(self) -> str:
        where = self.cache or "~/.cache/edgekit-remote"
        return (
            f"{self.target} has no space left on its disk for {where}; free some space there, or point "
            "--remote-cache at a larger disk."
        )

    def _failed(self, step: str, proc: subprocess.CompletedProcess) -> str:
        """The sentence for a remote step that failed without a more specific cause."""
        return f"{step} on {self.target} failed (exit {proc.returncode}): {last_line(proc.stderr)}"


def ssh_failure(target: Target, stderr: str) -> str:
    """The sentence for an ssh that could not connect or log in (exit 255), from its stderr."""
    line = last_line(stderr.encode())
    if "Permission denied" in stderr:
        return (
            f"ssh to {target} failed authentication ({line}); put your public key in the device's "
            f"~/.ssh/authorized_keys (ssh-copy-id) or load it into ssh-agent, and check that "
            f"`ssh {target.destination} true` runs without a prompt."
        )
    if "Host key verification failed" in stderr:
        return (
            f"{target}'s host key is unknown or has changed ({line}); connect once with "
            f"`ssh {target.destination}` to check and accept it."
        )
    if any(x in stderr for x in UNREACHABLE):
        return (
            f"{target} is unreachable ({line}); check the host name and port, and that the device "
            "is on and runs sshd."
        )
    return f"ssh to {target} failed ({line}); check that `ssh {target.destination} true` works here."


def device_path(path: str) -> str:
    """PATH quoted for the device's shell, a leading ~/ meaning the home directory there."""
    return '"$HOME"/' + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def last_line(stderr: bytes) -> str:
    """The last line of a remote stderr that is not an ssh warning, shortened."""
    lines = [x for x in stderr.decode(errors="replace").strip().splitlines() if not x.startswith("Warning:")]
    return (lines[-1] if lines else "no message")[:300]


@functools.lru_cache(maxsize=1)
def code_bundle() -> tuple[str, list[tuple[str, bytes]]]:
    """The worker's code (SHIPPED, relative to the package) and the sha256 naming it on the device."""
    files = [(name, (PACKAGE / name).read_bytes()) for name in SHIPPED]
    h = hashlib.sha256()
    for name, data in files:
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest(), files


def npz_sha(path: Path) -> str:
    """sha256 of an .npz's arrays (names, dtypes, shapes, data), not of the file: np.savez stamps
    the time into the zip, so the same inputs saved twice differ in bytes."""
    h = hashlib.sha256()
    with np.load(path) as z:
        for key in sorted(z.files):
            a = np.ascontiguousarray(z[key])
            h.update(f"{key}\0{a.dtype.str}\0{a.shape}\0".encode())
            h.update(a.tobytes())
    return h.hexdigest()


def not_applicable(rt) -> str | None:
    """Why runtime RT cannot run on a device over ssh, or None: a runtime that runs the source torch
    model would need the source file and torch there."""
    if rt.SOURCE:
        return (
            f"{rt.NAME} runs the source torch model, which over ssh would need the source file and torch "
            "on the device; benchmark the exported artifact with ort, openvino or tensorrt there"
        )
    return None
