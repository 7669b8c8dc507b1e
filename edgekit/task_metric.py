"""The user's task metric (`--metric module:function`): called as `function(outputs, labels)` with
the model's outputs (a list of arrays, one per output, samples first) and the evaluation labels (or
None), it returns a number, higher is better, or a dict of numbers whose first entry is the one
judged. Measured on the parent and on the compressed model, it is what the manifest's verification,
bench rows and `max_accuracy_drop` / `min_metric` gates read."""

from __future__ import annotations

import math

import numpy as np

from edgekit.errors import EdgekitError, first_line
from edgekit.user_code import load_function


def measure(spec: str, outputs: list[np.ndarray], labels: np.ndarray | None) -> dict[str, float]:
    """SPEC's numbers on OUTPUTS, by name (a bare number is named after the function)."""
    fn = load_function(spec, "--metric")
    try:
        value = fn([np.asarray(o) for o in outputs], labels)
    except Exception as e:
        raise EdgekitError(f"--metric {spec} raised {type(e).__name__}: {first_line(e)}.") from None
    values = value if isinstance(value, dict) else {spec.partition(":")[2]: value}
    numbers = {}
    for name, v in values.items():
        try:
            numbers[str(name)] = float(v)
        except (TypeError, ValueError):
            numbers[str(name)] = math.nan
        if not math.isfinite(numbers[str(name)]):
            raise EdgekitError(
                f"--metric {spec} returned {v!r} for {name!r}; it must return a finite number, "
                "or a dict of them."
            )
    if not numbers:
        raise EdgekitError(f"--metric {spec} returned an empty dict; it must name at least one number.")
    return numbers


def against(spec: str, parent: list[np.ndarray] | None, child: list[np.ndarray], labels) -> dict:
    """SPEC on the child's outputs (the judged number and all of them) and, given the parent's, on
    those too, with the drop."""
    after = measure(spec, child, labels)
    name = next(iter(after))
    result = {"metric": spec, "name": name, "value": after[name], "values": after}
    if parent is not None:
        before = measure(spec, parent, labels)
        result.update(parent=before[name], drop=before[name] - after[name], parent_values=before)
    return result
