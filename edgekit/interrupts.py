"""Ctrl-C and SIGTERM, remembered as well as raised: Python drops an exception raised where it cannot
propagate (a weakref callback, a __del__, the import lock's cleanup), so a signal landing there
would be lost and the run would finish and write its output. Every commit of an output asks first.
A C extension can also replace the raise with its own error (protobuf's, mid-import, gave a
TypeError in CI): the CLI reads that error as the signal remembered."""

from __future__ import annotations

import signal
import sys

_received: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every `finally` (staging directories, temporary files, worker
    processes) cleans up before the exit."""


def _raise(signum: int) -> None:
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def _on_signal(signum, frame) -> None:
    _received.append(signum)
    _raise(signum)


def _unraisable(info) -> None:
    """A dropped Ctrl-C or SIGTERM is remembered, so its traceback on stderr says nothing the exit
    will not; any other dropped exception is printed as Python prints it."""
    if not isinstance(info.exc_value, KeyboardInterrupt):
        sys.__unraisablehook__(info)


def install() -> None:
    """Handle SIGINT and SIGTERM in this (the CLI's) process: raise, and remember. A signal the
    process was started ignoring stays ignored (a shell script's background job ignores Ctrl-C)."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)
    sys.unraisablehook = _unraisable


def received() -> int | None:
    """The first signal received, or None."""
    return _received[0] if _received else None


def check() -> None:
    """Raise the first signal received again, before an output is committed: the raise it got when
    it arrived may have been swallowed."""
    if _received:
        _raise(_received[0])
