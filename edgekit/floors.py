"""Fidelity floors: the least each output of a compressed model must keep of its fp32 parent, by the
metric of its kind (docs/guide/quantize.md, "Fidelity floors"). A model below a floor is still
written, but compress exits 1 with one sentence naming the metric, the value, the floor, where the
error grows and what to try next; on random inputs a miss is only a warning (noise is not the
model's data)."""

from __future__ import annotations

import math

from edgekit.benchmarks.metrics import MAIN
from edgekit.errors import EdgekitError

# kind -> (the metric judged, how sentences name it, the default floor): each kind's main number
# (benchmarks.metrics.MAIN, which gates read too), and SQNR for the rest
FLOOR = {
    "classes": 0.80,
    "embedding": 0.95,
    "sequence": 0.90,
    "dense": 0.80,
    "image": 0.90,
    "segmentation": 0.90,
    "labels": 0.80,
}
METRICS: dict[str, tuple[str, str, float]] = {
    **{kind: (*MAIN[kind], floor) for kind, floor in FLOOR.items()},
    "other": ("sqnr_db", "SQNR", 10.0),
}
# with labels, the first output (class scores) is judged by the top-1 it keeps: top-1 / fp32's top-1
ACCURACY = "accuracy"
DEFAULTS: dict[str, float] = {**{k: m[2] for k, m in METRICS.items()}, ACCURACY: 0.95}
NO_FLOORS: dict[str, float] = dict.fromkeys(DEFAULTS, 0.0)  # `--min-fidelity 0`
FRACTIONS = (*[k for k in METRICS if k != "other"], ACCURACY)  # floors in [0, 1]; other's is dB
JUDGED = ("prune", "int8", "fp16", "bf16")  # the verification entries a floor applies to


class FloorNotMet(EdgekitError):
    """A compressed model's fidelity fell below its floor; the model was written (exit 1)."""

    exit_code = 1


def parse(specs: list[str] | tuple[str, ...], flag: str = "--min-fidelity") -> dict[str, float]:
    """The floors of SPECS over the defaults: VALUE (every fraction-valued floor; 0 turns every floor
    off), KIND=VALUE, accuracy=VALUE, or NAME=VALUE for one output (its name or output_N)."""
    floors = dict(DEFAULTS)
    for spec in specs:
        key, sep, text = str(spec).rpartition("=")
        value = _number(text, spec, flag)
        if not sep:
            _fraction(value, spec, flag)
            keys = DEFAULTS if value == 0 else FRACTIONS
            floors.update(dict.fromkeys(keys, value))
            continue
        if not key:
            raise EdgekitError(f"{flag} {spec!r} names no kind or output before '='.")
        if key in FRACTIONS:
            _fraction(value, spec, flag)
        floors[key] = value
    return floors


def from_config(value: float | dict[str, float] | None) -> dict[str, float]:
    """The floors of edgekit.yaml's data.min_fidelity: one number, or {kind or output: floor}."""
    if value is None:
        return dict(DEFAULTS)
    items = value.items() if isinstance(value, dict) else [(None, value)]
    return parse([str(v) if k is None else f"{k}={v}" for k, v in items], "min_fidelity")


def _number(text: str, spec: str, flag: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise EdgekitError(
            f"{flag} {spec!r} must be a number at least 0: VALUE, KIND=VALUE (KIND one of "
            f"{', '.join(DEFAULTS)}) or OUTPUT=VALUE; 0 turns the floor off."
        )
    return value


def _fraction(value: float, spec: str, flag: str) -> None:
    if value > 1:
        raise EdgekitError(
            f"{flag} {spec!r}: that floor is a fraction from 0 to 1 (an SQNR floor in dB is other=DB)."
        )


def judge(quality: dict, floors: dict[str, float]) -> list[dict]:
    """Each output's metric against its floor (one record per output; `met` False for a miss)."""
    fid = quality.get("fidelity") or {}
    records = []
    for key, out in fid.items():
        if not key.startswith("output_") or not isinstance(out, dict):
            continue
        name, kind = out.get("name", key), out.get("kind", "other")
        metric, label, _ = METRICS.get(kind, METRICS["other"])
        value, group = out.get(metric), kind
        if key == "output_0" and quality.get("parent_top1") and "top1" in quality:
            metric, label, group = "top1 kept", "top-1 kept of fp32's", ACCURACY
            value = quality["top1"] / quality["parent_top1"]
        floor = floors.get(name, floors.get(key, floors.get(group, 0.0)))
        if value is None or not floor:
            continue
        record = {"output": key, "name": name, "kind": kind, "metric": metric, "label": label}
        records.append({**record, "value": float(value), "floor": floor, "met": bool(value >= floor)})
    return records


def check_names(floors: dict[str, float], outputs: list[str]) -> None:
    """Every output a floor names is one of the model's (by name or output_N)."""
    known = {*DEFAULTS, *outputs, *(f"output_{i}" for i in range(len(outputs)))}
    unknown = [k for k in floors if k not in known]
    if unknown:
        raise EdgekitError(
            f"--min-fidelity names {unknown[0]!r}, which is neither a kind ({', '.join(DEFAULTS)}) nor an "
            f"output of the model ({', '.join(outputs)})."
        )


def recorded_miss(verification: dict) -> str | None:
    """The sentence of the floor a model written earlier missed (`edgekit run`'s cached stages)."""
    return next(
        (v["floor_missed"] for v in verification.values() if isinstance(v, dict) and "floor_missed" in v),
        None,
    )


def on_noise(quality: dict) -> bool:
    """Measured on random inputs: a miss there says little about the model on its own data."""
    return str(quality.get("data", "")).startswith("random inputs")


def shown(record: dict) -> str:
    """'top-1 agreement 0.62, below the floor 0.80' (dB for SQNR)."""
    unit = " dB" if record["metric"] == "sqnr_db" else ""
    return f"{record['label']} {record['value']:.3g}{unit}, below the floor {record['floor']:.3g}{unit}"


def sentence(out: str, step: str, record: dict, layers: list[dict], hints: list[str]) -> str:
    """The one sentence of a missed floor: the output, the metric, value and floor, the layers where
    the error grows most, and what to try next."""
    where = ""
    if layers:
        named = ", ".join(
            f"{x['node']} ({x['op']}, {round(x['sqnr_in_db'])} -> {round(x['sqnr_db'])} dB)" for x in layers
        )
        where = f"; the error grows most at {named}"
    what = f"output {record['name']!r} ({record['kind']})"
    return (
        f"{out} was written, but its {step} {what} has {shown(record)}{where}; try "
        f"{', '.join(hints)} (--min-fidelity changes the floor)."
    )
