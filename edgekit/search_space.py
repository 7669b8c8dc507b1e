"""edgekit.yaml's `search:` section: the space of compression configs, the objectives and the hard
constraints, and each point of the space as the chain of passes it runs (edgekit.passes).

A key of the space is a pass config key from the pass table (`int8.calibration`, `prune.ratio`,
`mixed.max_accuracy_drop`), or `precision` (fp32, int8, fp16, bf16: which of the alternatives runs)
or `runtime` (what the candidate runs in on the search's target). A value is a list, or a range
`{low, high, step}` (a grid needs the step). A pass key adds its pass where the chain has none; null
leaves the pass out; keys of a precision pass the point's `precision` (or the base's) does not run
are ignored, so two points that run the same chain are one candidate. Plain data, no Ray:
edgekit.config imports it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from edgekit.errors import EdgekitError
from edgekit.passes import FLAG_ORDER, PASSES, Step, config
from edgekit.passes import problem as chain_problem

PRECISIONS = ("fp32", "int8", "fp16", "bf16")
ALTERNATIVES = ("int8", "mixed", "fp16", "bf16")  # the precision passes a `precision` key replaces
OBJECTIVES = {"latency": "min", "accuracy": "min", "size": "min"}  # accuracy: the drop in points
RUNTIMES = ("ort", "openvino")


class Range(BaseModel):
    """Numbers from LOW to HIGH: every STEP in a grid, any in between for Optuna (a multiple of
    STEP where one is given)."""

    model_config = ConfigDict(extra="forbid")

    low: float
    high: float
    step: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.high < self.low:
            raise ValueError(f"high {self.high:g} is below low {self.low:g}")
        return self

    def values(self) -> list[float]:
        if self.step is None:
            raise EdgekitError(
                f"a grid needs a step for the range {self.low:g}..{self.high:g}; add step, or use "
                "algorithm: optuna."
            )
        count = round((self.high - self.low) / self.step) + 1
        return [round(self.low + i * self.step, 10) for i in range(count)]


class Constraints(BaseModel):
    """Hard limits a candidate must meet to be on the front; a candidate that misses one is kept in
    the results with the reason."""

    model_config = ConfigDict(extra="forbid")

    max_accuracy_drop: float | None = Field(None, ge=0)  # points: top-1 with labels, else agreement
    min_fidelity: float | None = None  # the first output's main fidelity (cosine, SQNR dB, IoU ...)
    max_size_mb: float | None = Field(None, gt=0)
    max_latency_ms: float | None = Field(None, gt=0)  # median on the target


class SearchConfig(BaseModel):
    """What `edgekit search` varies, what it optimizes and what every result must meet."""

    model_config = ConfigDict(extra="forbid")

    target: str  # the targets: entry candidates are timed on
    base: str | None = None  # a variant whose chain the space edits (None: the fp32 model)
    space: dict[str, list[Any] | Range] = Field(min_length=1)
    objectives: list[Literal[tuple(OBJECTIVES)]] = ["latency", "accuracy", "size"]  # type: ignore[valid-type]
    constraints: Constraints = Field(default_factory=Constraints)
    algorithm: Literal["grid", "optuna"] = "grid"
    samples: int | None = Field(None, ge=1)  # optuna: candidates to try; grid: all of them
    seed: int = 0
    eval_share: int = Field(256, ge=1)  # evaluation samples per Ray task; larger sets are split
    timing_rounds: int | None = Field(None, ge=3)  # None: the target's rounds

    @model_validator(mode="after")
    def _keys(self) -> SearchConfig:
        for key, values in self.space.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"space.{key} lists no values")
            if key in ("precision", "runtime"):
                known = PRECISIONS if key == "precision" else RUNTIMES
                bad = [v for v in _listed(values) if v not in known]
                if bad:
                    raise ValueError(f"space.{key} takes {', '.join(known)}, not {bad[0]!r}")
                continue
            name, _, field = key.partition(".")
            if name not in PASSES or name in ("export", "build") or not field:
                raise ValueError(
                    f"space key {key!r} is not PASS.KEY of a compress pass "
                    f"({', '.join(n for n in PASSES if n not in ('export', 'build'))}), precision or runtime"
                )
            fields = PASSES[name].config.model_fields
            if field not in fields or field == "version":
                raise ValueError(
                    f"space key {key!r}: {name} has no key {field!r}; it has {', '.join(fields)}"
                )
        if self.algorithm == "optuna" and self.samples is None:
            raise ValueError("algorithm optuna needs samples: how many candidates to try")
        return self


def _listed(values) -> list:
    return values if isinstance(values, list) else []


def grid(cfg: SearchConfig) -> list[dict]:
    """Every point of the space (ranges at their steps), in a fixed order."""
    keys = sorted(cfg.space)
    values = [v.values() if isinstance(v, Range) else v for v in (cfg.space[k] for k in keys)]
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def chain_of(base: list, point: dict) -> list:
    """The steps (edgekit.passes.Step) POINT runs: BASE's, with the point's precision and pass keys
    applied, in the order compress runs its flags. A bad value is one EdgekitError sentence."""
    steps = {s.name: s.config.model_dump(exclude_defaults=True, exclude={"version"}) for s in base}
    extra = [s for s in base if s.name not in FLAG_ORDER]  # build: kept, last
    precision = point.get("precision")
    if precision is not None:
        steps = {k: v for k, v in steps.items() if k not in ALTERNATIVES}
        if precision != "fp32":
            steps[precision] = {}
    for key in sorted(k for k in point if "." in k):
        name, _, field = key.partition(".")
        value = point[key]
        if name in ALTERNATIVES and name not in steps and _moot(name, steps, precision):
            continue  # the point's precision, or the base's, does not run this pass
        if name == "mixed" and value is not None:
            steps.setdefault("int8", {})
        if value is None:
            steps.pop(name, None)
            if name == "int8":
                steps.pop("mixed", None)
            continue
        steps.setdefault(name, {})[field] = value
    ordered = [Step(n, config(n, **steps[n])) for n in FLAG_ORDER if n in steps]
    return ordered + [s for s in extra if s.name not in steps]


def _moot(name: str, steps: dict, precision: str | None) -> bool:
    """Whether a key of the precision pass NAME, absent from STEPS, does not apply: the point chose
    its precision, or the chain runs another one (mixed applies wherever int8 runs)."""
    if name == "mixed" and "int8" in steps:
        return False
    return precision is not None or any(a in steps for a in ALTERNATIVES)


def runtime_of(point: dict, default: str) -> str:
    return point.get("runtime", default)


def key(chain: list, runtime: str) -> str:
    """A candidate's identity: its chain and runtime; equal for two points that run the same."""
    text = json.dumps(
        [[s.name, s.config.model_dump(mode="json")] for s in chain] + [runtime], sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def name(candidate_key: str) -> str:
    """The short name a candidate is shown, applied and plotted by."""
    return f"s{candidate_key[:7]}"


def describe(chain: list, runtime: str) -> str:
    """A chain in one line: `int8(calibration=mse) · ort`."""
    parts = []
    for s in chain:
        fields = s.config.model_dump(exclude_defaults=True, exclude={"version"})
        inner = ",".join(f"{k}={v}" for k, v in fields.items())
        parts.append(f"{s.name}({inner})" if inner else s.name)
    return " → ".join(parts or ["fp32"]) + f" · {runtime}"


def problem(chain: list, runtime: str) -> str | None:
    """Why a candidate cannot run as its point asks (bf16 outside OpenVINO, a chain the pass table
    refuses), or None."""
    names = [s.name for s in chain]
    if "bf16" in names and runtime != "openvino":
        return "bf16 computes in OpenVINO; this point runs it in " + runtime
    return chain_problem(chain)
