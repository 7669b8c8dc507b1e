"""The environment of a fresh Python process that runs edgekit's own modules (`python -m edgekit...`):
this edgekit's source first on PYTHONPATH, the user's kept (an --arch module may be found through it)."""

from __future__ import annotations

import os
from pathlib import Path


def child_env() -> dict[str, str]:
    """This process's environment with edgekit's source root put first on PYTHONPATH."""
    paths = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
