"""`edgekit runtimes`: which runtimes are installed here, their versions and devices, and the CPU
class an INT8 model made here is for."""

from __future__ import annotations

from edgekit import target_cpu
from edgekit.runtimes import ALL, get


def table():
    """A rich table: each runtime, installed or not (then the pip command), version, devices."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="edgekit runtimes", title_justify="left")
    for col in ("runtime", "available", "version", "devices"):
        t.add_column(col)
    for name in ALL:
        rt = get(name)
        if not rt.available():
            t.add_row(name, "no", escape(rt.INSTALL), "")  # escaped: "[tensorrt]" is not a style
            continue
        d = rt.describe()
        t.add_row(name, "yes", d["version"], ", ".join(d["devices"]))
    return t


def cpu_line() -> str:
    """This CPU, its flags and class, and the INT8 form `--int8` makes (for EDGEKIT_TARGET_CPU's
    class when that is set)."""
    here, made = target_cpu.here(), target_cpu.resolve()
    examples = target_cpu.CLASSES[here.cpu_class].examples if here.cpu_class in target_cpu.CLASSES else "?"
    return (
        f"CPU: {here.cpu} ({', '.join(here.flags) or 'no INT8/bf16 flags'}): class {here.cpu_class}"
        f" ({examples}); --int8 makes the {target_cpu.auto_form(made)} form for {made.cpu_class}"
        + (f" ({made.source})" if made.source != "this machine" else "")
        + "."
    )
