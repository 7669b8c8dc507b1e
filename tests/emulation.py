"""The skip for tests that run INT8 as an AVX2-only CPU computes it (saturation included) under
qemu's user-mode emulation, which works on any x86-64 CPU (`make test` installs qemu-user)."""

from __future__ import annotations

import platform
import shutil

import pytest

needs_qemu = pytest.mark.skipif(
    shutil.which("qemu-x86_64") is None or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="needs qemu's user-mode x86-64 emulator (apt-get install qemu-user) on an x86-64 machine",
)
