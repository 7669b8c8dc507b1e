"""Every command, given bad input, answers in one sentence with exit 2 and never a Python
traceback (without --debug). The commands and their options are read from the CLI itself, so a
new command or option is swept without editing this file."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import pytest

from edgekit.cli import cli

COMMANDS = sorted(cli.commands)
# --opset's range is the installed exporter's, checked where the export runs, not by click
LIBRARY_CHECKED = {"--opset"}


def placeholders(command: click.Command, out: Path) -> list[str]:
    """Values for the required options (the first choice, or a path under OUT), so what is swept
    is the only thing wrong on the command line."""
    argv = []
    for p in command.params:
        if isinstance(p, click.Option) and p.required:
            value = p.type.choices[0] if isinstance(p.type, click.Choice) else str(out / p.name)
            argv += [p.opts[0], value]
    return argv


def refused(result, args) -> str:
    """The one-sentence refusal: exit 2, one stderr line, no traceback. Returns the sentence."""
    detail = f"edgekit {' '.join(map(str, args))}\nexit {result.returncode}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, detail
    assert "Traceback" not in result.stdout + result.stderr, detail
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), detail
    return lines[0]


def numeric_options(command: click.Command) -> list[click.Option]:
    return [
        p
        for p in command.params
        if isinstance(p, click.Option) and isinstance(p.type, click.types._NumberParamTypeBase)
    ]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_numeric_option_refuses_negative_and_non_finite_values(name, edgekit, work):
    """No count, size, duration, rate or fraction in edgekit is meaningfully -1, nan or inf: each is
    refused while the command line is read, before any work, naming the option."""
    command = cli.commands[name]
    options = [o for o in numeric_options(command) if o.opts[0] not in LIBRARY_CHECKED]
    if not options:
        pytest.skip(f"`edgekit {name}` takes no numeric option")
    positional = ["x" for p in command.params if isinstance(p, click.Argument)]
    cases = [
        (o, value)
        for o in options
        for value in (["-1", "nan", "inf"] if isinstance(o.type, click.FloatRange) else ["-1"])
    ]

    def run(case):
        option, value = case
        args = [name, option.opts[0], value, *placeholders(command, work), *positional]
        sentence = refused(edgekit(*args, timeout=60), args)
        assert option.opts[0] in sentence, sentence

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(run, cases))


def test_every_numeric_option_has_a_range():
    """A plain int or float option would let -1 or nan through to the library."""
    plain = [
        f"{name} {o.opts[0]}"
        for name in COMMANDS
        for o in numeric_options(cli.commands[name])
        if not isinstance(o.type, click.IntRange | click.FloatRange) and o.opts[0] not in LIBRARY_CHECKED
    ]
    assert not plain, f"numeric options without a range: {plain}"


@pytest.fixture(scope="module")
def bad_paths(tmp_path_factory) -> dict[str, Path]:
    """A path that does not exist, random bytes, a text file, an empty folder and a named pipe
    (which blocks whoever opens it for reading until a writer comes: a hang, unless refused)."""
    root = tmp_path_factory.mktemp("bad-paths")
    (root / "junk.pt").write_bytes(os.urandom(4096))
    (root / "notes.txt").write_text("not a model, not data, not a config\n")
    (root / "empty").mkdir()
    os.mkfifo(root / "pipe")
    return {
        "missing": root / "missing.onnx",
        "random bytes": root / "junk.pt",
        "text": root / "notes.txt",
        "empty folder": root / "empty",
        "named pipe": root / "pipe",
    }


@pytest.mark.parametrize(
    "name", [n for n in COMMANDS if any(isinstance(p, click.Argument) for p in cli.commands[n].params)]
)
def test_every_path_argument_refuses_what_it_cannot_read(name, bad_paths, edgekit, work):
    """Each command's positional path given each kind of bad path: one sentence, exit 2, within a
    minute (a named pipe must be refused, not opened)."""
    command = cli.commands[name]

    def run(kind):
        out = work / kind.replace(" ", "-")
        args = [name, bad_paths[kind], *placeholders(command, out)]
        refused(edgekit(*args, timeout=60), args)
        assert not out.exists(), f"edgekit {name} on {kind} wrote {out}"

    with ThreadPoolExecutor(3) as pool:
        list(pool.map(run, bad_paths))
