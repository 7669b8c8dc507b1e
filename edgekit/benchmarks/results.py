"""Result records on disk: JSON lines are the interchange every view (table, report, gate) reads."""

from __future__ import annotations

import json
from pathlib import Path

from edgekit.artifact import write_atomic
from edgekit.benchmarks.record import checked, record
from edgekit.errors import EdgekitError
from edgekit.files import read_text

RESULTS_FILE = "results.jsonl"


def append_records(directory: Path, records: list[dict]) -> Path:
    """Add records, one JSON object per line, to DIR/results.jsonl. The whole new file is written
    under a temporary name and renamed over the old one, so an interrupted run never leaves half a line."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise EdgekitError(f"-o {directory} is a file; give a directory for results.jsonl.")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    old = path.read_text() if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_atomic(path, old + "".join(json.dumps(record(r)) + "\n" for r in records))
    return path


def results_path(path: Path) -> Path:
    """The results file a user meant: DIR/results.jsonl for a directory, else the file itself."""
    path = Path(path)
    if not path.exists():
        raise EdgekitError(f"results {path} do not exist; write them with `edgekit bench ... -o DIR`.")
    if path.is_dir():
        path = path / RESULTS_FILE
        if not path.is_file():
            raise EdgekitError(f"{path} does not exist; write it with `edgekit bench ... -o {path.parent}`.")
    return path


def load_records(path: Path) -> list[dict]:
    """Records (each checked as a BenchRecord) from a results directory or .jsonl file (`bench -o`,
    `run`), the JSON list `bench --json` writes, or the comparison `compare --json` writes."""
    path = results_path(path)
    text = read_text(path, "results")
    if not text.strip():
        raise EdgekitError(f"{path} is empty; it holds no benchmark records.")
    if text.lstrip().startswith("["):
        records = _parse(text, path, None)
    elif _comparison(text):
        records = json.loads(text).get("records")
    else:
        records = [_parse(line, path, i) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not isinstance(records, list):
        raise EdgekitError(f"{path} is not a list of benchmark records.")
    return [checked(r, f"record {i} of {path}") for i, r in enumerate(records, 1)]


def _comparison(text: str) -> bool:
    """Whether TEXT is the one JSON object `compare --json` writes (its two records under "records")."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(whole, dict) and "ratio_b_over_a" in whole


def _parse(text: str, path: Path, line: int | None):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"line {line} of {path}" if line else str(path)
        raise EdgekitError(f"{where} is not valid JSON ({e.msg}).") from None
