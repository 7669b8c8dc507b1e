"""Input files read as a user names them: one sentence for what is missing, not a regular file
(a named pipe would block the read forever), or not text."""

from __future__ import annotations

import stat
from pathlib import Path

from edgekit.errors import EdgekitError


def regular_file(path: Path, what: str) -> Path:
    """PATH if it is a regular file (after symlinks); else one sentence naming WHAT it was for."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise EdgekitError(f"{what} {path} does not exist.") from None
    except OSError as e:
        raise EdgekitError(f"{what} {path} cannot be read: {e.strerror}.") from None
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
        raise EdgekitError(f"{what} {path} is {kind}; give a file.")
    return path


def read_text(path: Path, what: str) -> str:
    """The UTF-8 text of a regular file, or one sentence saying why it cannot be read."""
    path = regular_file(path, what)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgekitError(f"{what} {path} is not a text file (UTF-8).") from None
    except OSError as e:
        raise EdgekitError(f"{what} {path} cannot be read: {e.strerror}.") from None
