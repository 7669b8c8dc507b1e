"""What every hostile-input test shares: the tiny model's source (built by conftest's `tiny`), the
check that a refusal is one sentence with exit 2 and nothing written, and waiting for a state."""

from __future__ import annotations

import hashlib
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

SHAPE = "1,1,16,16"  # the tiny model's input: 1 channel, 16x16
# `import onnxruntime` (1.32) writes $TMPDIR/.ses and never removes it: not a leftover of edgekit's
IMPORT_LEFTOVERS = {".ses"}

TINY_NET = textwrap.dedent(
    """
    import torch
    from torch import nn


    def net():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 3),
        )
    """
)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_refused(result, out: Path, inputs: list[Path] = (), hashes: dict | None = None) -> str:
    """Exit 2, exactly one sentence on stderr starting 'edgekit: error:', no traceback, nothing
    on stdout, no output directory, no staging leftovers, inputs unchanged. Returns the sentence."""
    detail = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, detail
    assert "Traceback" not in result.stdout + result.stderr, detail
    assert result.stdout == "", detail
    lines = result.stderr.splitlines()
    assert len(lines) == 1, detail
    sentence = lines[0]
    assert sentence.startswith("edgekit: error: "), detail
    assert sentence.endswith("."), detail
    if not any(Path(p) == out or Path(p).is_relative_to(out) for p in inputs):  # else out was there before
        assert not out.exists(), detail
    parent = out.parent
    if parent.is_dir():
        leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, f"staging leftovers {leftovers}\n{detail}"
    for path in inputs:
        assert sha256(path) == hashes[path], f"{path} was modified"
    return sentence.removeprefix("edgekit: error: ")


def hashes_of(*paths: Path) -> dict:
    return {p: sha256(p) for p in paths}


def wait_for(proc: subprocess.Popen, what: str, ready, timeout: float = 120) -> None:
    """Poll until ready() holds, failing if PROC ends first or TIMEOUT seconds pass. The deadline
    is generous: a slow or busy machine only makes it take longer, never makes it wrong."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            stdout, stderr = proc.communicate()
            pytest.fail(f"exit {proc.returncode} before {what}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)
