"""A signal whose raise Python drops (it landed in a __del__, a weakref callback, the import lock's
cleanup) still stops the output's commit: CI once saw Ctrl-C land in importlib's lock callback and
the run write its artifact and exit 0."""

import os
import signal
import sys

import pytest

from edgekit import cli, interrupts
from edgekit.artifact import staging, write_atomic


class _Dropped:
    """Delivers SIGNUM to edgekit's handler from a __del__, where Python prints and drops the raise."""

    def __init__(self, signum: int):
        self.signum = signum

    def __del__(self):
        os.kill(os.getpid(), self.signum)


@pytest.fixture
def handlers(monkeypatch):
    """edgekit's handlers installed, as the CLI's main() does, and put back after the test."""
    monkeypatch.setattr(interrupts, "_received", [])
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # restored after
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interrupts.install()
    yield
    for s, h in saved.items():
        signal.signal(s, h)


@pytest.mark.parametrize(
    "signum, raised", [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, interrupts.Terminated)]
)
def test_a_dropped_signal_still_stops_the_artifact(handlers, tmp_path, signum, raised):
    out = tmp_path / "out"
    with pytest.raises(raised), staging(out, force=False) as tmp:
        (tmp / "model.onnx").write_bytes(b"onnx")
        _Dropped(signum)  # freed at once: the handler raises inside __del__, Python drops it
        (tmp / "edgekit.json").write_text("{}")  # so the run goes on to its commit
    assert list(tmp_path.iterdir()) == []  # neither the artifact nor its staging directory


def test_a_dropped_signal_still_stops_a_file_write(handlers, tmp_path, capsys):
    path = tmp_path / "results.json"
    path.write_text("old")
    _Dropped(signal.SIGINT)
    assert capsys.readouterr().err == ""  # no traceback of the drop: the exit's sentence says it
    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, "new")
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"] and path.read_text() == "old"


def test_without_a_signal_the_commit_happens(handlers, tmp_path):
    with staging(tmp_path / "out", force=False) as tmp:
        (tmp / "model.onnx").write_bytes(b"onnx")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"onnx"


def test_a_signal_started_ignored_stays_ignored(handlers):
    """A shell script's background job starts with Ctrl-C ignored; edgekit does not take it back."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    interrupts.install()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert signal.getsignal(signal.SIGTERM) is interrupts._on_signal


@pytest.mark.parametrize(
    "signum, code, said", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_replaced_by_another_error_still_exits_as_the_signal(handlers, capsys, signum, code, said):
    """CI saw SIGTERM land in an import that protobuf's C code was running: the raise came back as
    `TypeError: expected a message argument`, a traceback and exit 1 instead of 143."""

    def run():
        try:
            os.kill(os.getpid(), signum)
        except KeyboardInterrupt:
            raise TypeError("expected a message argument") from None  # as the C extension did

    with pytest.raises(SystemExit) as exit_:
        cli._run(run, debug=False)
    assert exit_.value.code == code
    assert capsys.readouterr().err.strip() == f"edgekit: {said}; nothing was written."


def test_without_a_signal_another_error_is_not_read_as_one(handlers):
    def run():
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        cli._run(run, debug=False)


def test_edgekit_s_own_answer_to_a_signal_keeps_its_sentence(handlers, capsys):
    """search answers Ctrl-C by keeping what finished and saying how to resume (exit 130)."""
    from edgekit.errors import EdgekitError

    class Answered(EdgekitError):
        exit_code = 130

    def run():
        try:
            os.kill(os.getpid(), signal.SIGINT)
        except KeyboardInterrupt:
            raise Answered("interrupted: run the same command again to resume.") from None

    with pytest.raises(SystemExit) as exit_:
        cli._run(run, debug=False)
    assert exit_.value.code == 130
    assert "run the same command again to resume" in capsys.readouterr().err
