"""Each bench script owns one marked section of docs/BENCHMARKS.md and rewrites only that."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"


def cpu_line(fp: dict) -> str:
    """The CPU a table was measured on, as every table states it: model, INT8 class and the flags
    that decide INT8 and bf16 speed (edgekit.benchmarks.fingerprint)."""
    return f"{fp['cpu']} (class {fp.get('cpu_class', '?')}; flags: {', '.join(fp['cpu_flags']) or 'none'})"


def write_section(name: str, section: str, path: Path = BENCHMARKS) -> None:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` (markers included,
    SECTION must carry them) or append SECTION when the file has no such section yet."""
    text = (
        path.read_text()
        if path.exists()
        else "# Benchmarks\n\nNumbers written by the scripts in bench/; re-run them to refresh.\n"
    )
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    if start in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
