"""One benchmark record: what `bench -o`/`--json`, `compare --json` and `run` write, and what `gate`
and `report` read. Its JSON keys are those results files have always had; a key a kind of record
lacks is optional (a failed row has no latency, a `bench` row no target or variant)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.errors import EdgekitError

ROUND_KEYS = {"median_ms": "round_medians_ms", "p90_ms": "round_p90_ms", "p99_ms": "round_p99_ms"}


class Latency(BaseModel):
    """Milliseconds per run (worker.latency_stats); `round_*` lists once rounds were summarised."""

    model_config = ConfigDict(extra="allow")

    median_ms: float
    p90_ms: float | None = None
    p99_ms: float | None = None
    cv: float | None = None
    round_medians_ms: list[float] | None = None
    round_p90_ms: list[float] | None = None
    round_p99_ms: list[float] | None = None


class BenchRecord(BaseModel):
    """A measurement of one artifact on one runtime, device, precision, batch and host, or the
    reason there is none (`ok` false: `error`, or `not_applicable` with its `reason`)."""

    model_config = ConfigDict(extra="allow")

    artifact: str
    runtime: str
    ok: bool
    device: str | None = None
    precision: str | None = None
    batch: int | None = None
    host_target: str | None = None  # "local", or the ssh target it was measured on
    host: dict[str, Any] | None = None  # the machine's fingerprint
    error: str | None = None
    not_applicable: bool | None = None
    reason: str | None = None
    model_sha256: str | None = None
    size_bytes: int | None = None
    latency: Latency | None = None
    memory_mb: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    rounds: int | None = None  # interleaved rounds summarised into this record (compare, run)
    target: str | None = None  # `edgekit run`: the edgekit.yaml target and variant measured
    variant: str | None = None

    def as_dict(self) -> dict:
        """The record as JSON keys: exactly those it was made with."""
        return self.model_dump(exclude_unset=True)


def record(data: dict) -> dict:
    """DATA checked against BenchRecord, as the dict written to results files."""
    return BenchRecord.model_validate(data).as_dict()


def checked(data: object, where: str) -> dict:
    """A record read from a results file; one sentence naming WHERE when it is not one."""
    try:
        return BenchRecord.model_validate(data).as_dict()
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(k) for k in err["loc"]) or "the record"
        msg = err["msg"].split(" or instance of ")[0]
        msg = msg[:1].lower() + msg[1:]
        raise EdgekitError(
            f"{where} is not a benchmark record (needs artifact, runtime, ok; {key}: {msg})."
        ) from None


def per_round(latency: dict, key: str) -> list[float]:
    """KEY's per-round values (median_ms, p90_ms, p99_ms): a `bench` record's one value is one round."""
    return latency.get(ROUND_KEYS[key]) or [latency[key]]


def gate_names(r: dict) -> tuple[str, str]:
    """The (target, variant) a gate names a record by: `edgekit run`'s own, else the runtime and
    device it ran on (`ort-cpu`, `@HOST` when measured over ssh) and its artifact's directory name."""
    where = "" if r.get("host_target", "local") == "local" else f"@{r['host_target']}"
    target = r.get("target") or f"{r['runtime']}-{r.get('device') or 'cpu'}{where}"
    return target, r.get("variant") or Path(r["artifact"]).name
