"""How a result row is named in tables, notes and plots (shared by report and plots)."""

from __future__ import annotations

from pathlib import Path


def runtime_cell(r: dict, device: bool = True) -> str:
    """The runtime, with the device and precision when they are not the defaults (cpu, f32)."""
    shown = (r.get("device", "cpu") if device else "cpu", r.get("precision", "f32"))
    extra = [x for x in shown if x not in ("cpu", "f32")]
    return " ".join([r["runtime"], *extra])


def row_label(r: dict) -> str:
    """A short name for a row in plots: variant (or artifact directory name), runtime, batch."""
    return f"{r.get('variant') or Path(r['artifact']).name} · {runtime_cell(r)} · b{r.get('batch', '?')}"
