"""A throw-away OpenSSH server on 127.0.0.1 for the remote-benchmark tests (and bench/).

Debian's openssh-server binary runs with a config, host key and user key made in a temporary
directory, on a free port; the system sshd and ~/.ssh are never touched, and the server is killed
on exit. Clients reach it with `ssh -F <client_config> <ALIAS>`.
"""

from __future__ import annotations

import contextlib
import getpass
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")  # sshd refuses to start unless run by its absolute path
ALIAS = "edgekit-test"  # the server, with the authorized key
WRONG_KEY_ALIAS = "edgekit-wrong-key"  # the same server, with a key it does not know


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    client_config: Path  # for ssh -F: the aliases, the keys, a private known_hosts
    log: Path  # sshd's own log (-e), for a failing test to show

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def _wait_for(port: int, proc: subprocess.Popen, log: Path, seconds: float = 10) -> None:
    """Until sshd accepts connections on PORT; its log if it exits or never listens."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on 127.0.0.1:{port} within {seconds:g} s: {log.read_text()}")


@contextlib.contextmanager
def sshd(root: Path) -> Iterator[Sshd]:
    """Start sshd on a free port with keys and configs under ROOT; kill it on exit."""
    if not SSHD.is_file():
        raise RuntimeError("openssh-server is not installed; `make test` installs it")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation needs it (as root)
    root.mkdir(parents=True, exist_ok=True)
    port, user = free_port(), getpass.getuser()
    host_key, user_key, wrong_key = (_keygen(root / n) for n in ("host_key", "user_key", "wrong_key"))
    (root / "authorized_keys").write_text(Path(f"{user_key}.pub").read_text())
    config = root / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {host_key}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "PermitRootLogin prohibit-password\n"
    )
    client = root / "ssh_config"
    client.write_text(
        f"Host {ALIAS} 127.0.0.1\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
        f"  IdentityFile {user_key}\n"
        f"Host {WRONG_KEY_ALIAS}\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
        f"  IdentityFile {wrong_key}\n"
        f"Host *\n  IdentitiesOnly yes\n  UserKnownHostsFile {root / 'known_hosts'}\n"
        "  StrictHostKeyChecking accept-new\n"
    )
    log = root / "sshd.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=out, stderr=out)
    try:
        _wait_for(port, proc, log)
        yield Sshd(port=port, user=user, client_config=client, log=log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
