"""Ray for edgekit's independent jobs (search candidates, per-layer trials): a local Ray on this
machine by default, or an existing cluster (`--ray-address auto|HOST:PORT|ray://HOST:PORT`).

What edgekit adds to `ray.init`: Ray is imported only here and only when asked for (a missing one is
one sentence naming the extra); an address nobody answers at is one sentence (exit 2) within
seconds, not Ray's minute of retries; each timing device is a custom resource of capacity 1, so two
candidates are never timed on one device at once; and every task's ONNX Runtime sessions use the
CPUs Ray gave the task (EDGEKIT_THREADS), not every core of the node.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.runtimes.ort import THREADS  # ONNX Runtime threads of edgekit's own (non-timing) work


def ray_module():
    """The ray package, or one sentence saying how to install it."""
    try:
        import ray
    except ImportError:
        raise EdgekitError(
            "this runs on Ray, which is not installed here; install it with: pip install 'edgekit[ray]'."
        ) from None
    return ray


def device_resource(target: str) -> str:
    """The custom Ray resource (capacity 1) a target's timing holds."""
    return "edgekit_device_" + "".join(c if c.isalnum() else "_" for c in target)


def _reachable(address: str) -> str | None:
    """Why nothing answers at HOST:PORT (a TCP connect, 5 s), or None."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return f"{address!r} is not auto, HOST:PORT or ray://HOST:PORT"
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return None
    except OSError as e:
        return f"nothing answers at {hostport} ({e.strerror or e})"


@contextlib.contextmanager
def connect(address: str | None, devices: tuple[str, ...] = ()) -> Iterator[object]:
    """Ray, connected for the block: a local instance with every CPU of this machine and DEVICES as
    resources (address None or "local"), or the cluster at ADDRESS, which must hold DEVICES' resources.
    Already connected (a caller's own ray.init): used as it is."""
    ray = ray_module()
    if ray.is_initialized():
        yield ray
        return
    env = {"env_vars": {THREADS: "1", "PYTHONPATH": os.pathsep.join(_import_paths())}}
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C reaches edgekit, which keeps what finished
    if address in (None, "local"):
        resources = {device_resource(d): 1 for d in devices}
        ray.init("local", num_cpus=os.cpu_count(), resources=resources, runtime_env=env, **quiet)
    else:
        why = None if address == "auto" else _reachable(address)
        if why is None:
            try:
                ray.init(address=address, runtime_env=env, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as e:
                why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if why:
            raise EdgekitError(
                f"--ray-address {address}: no Ray cluster there ({why.rstrip('.')}); start one with "
                "`ray start --head`, or leave --ray-address out to run on this machine."
            )
        have = ray.cluster_resources()
        missing = [device_resource(d) for d in devices if device_resource(d) not in have]
        if missing:
            ray.shutdown()
            spec = ", ".join(f'"{m}": 1' for m in missing)
            raise EdgekitError(
                f"the cluster at {address} has no {missing[0]} resource, which timing holds so that "
                f"one candidate at a time runs on the device; start the node that reaches the device "
                f"with `ray start ... --resources '{{{spec}}}'`."
            )
    try:
        yield ray
    finally:
        ray.shutdown()


def _import_paths() -> list[str]:
    """This edgekit's and the working directory's import roots, for workers started in Ray's own
    directories (a user's --arch module:factory beside their config)."""
    return list(dict.fromkeys([str(Path(__file__).resolve().parents[1]), os.getcwd()]))


def cpus(ray) -> int:
    """CPUs of the connected cluster, at least 1."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def nodes(ray) -> int:
    """Alive nodes of the connected cluster."""
    return sum(1 for n in ray.nodes() if n.get("Alive"))
