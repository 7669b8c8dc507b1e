"""Feed many samples to a model in the batches it accepts.

A model with a fixed batch B (a .pt2 exported without a dynamic batch, `--static-batch`, an ONNX
file whose first axis is a number) takes exactly B samples per run: its data goes in batches of B,
the last one padded by repeating its last sample, and the padding's outputs are dropped. A model
with a dynamic batch gets batches of up to SIZE, unpadded. Every stage that runs a model on data
batches here; the benchmark worker imports it too, so it needs numpy only.

Data is kept with the samples on the first axis of every array; `Stacked` (data.Samples' inputs)
also says where each input's batch axis goes in the model's feeds (`state` [2, N, 64]: axis 1), or
that the input is fed once as it is (a scalar such as a sample rate: None).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np

Feeds = dict[str, np.ndarray]


class Stacked(dict):
    """Input arrays with the samples on axis 0, and AXES: where each input's batch axis is in the
    model's feeds (absent: 0), or None for an input fed as it is (its first sample's value)."""

    def __init__(self, arrays: Feeds, axes: dict[str, int | None]):
        super().__init__(arrays)
        self.axes = axes


def _laid_out(batch: Feeds, axes: dict[str, int | None]) -> Feeds:
    """BATCH (samples first) as the model takes it: each input's batch on its own axis."""
    laid = {}
    for k, v in batch.items():
        axis = axes.get(k, 0)
        laid[k] = np.array(v[0]) if axis is None else np.ascontiguousarray(np.moveaxis(v, 0, axis))
    return laid


def batches(inputs: Feeds, fixed: int | None, size: int = 32) -> Iterator[tuple[Feeds, int]]:
    """(feeds, real samples in them) for each batch of INPUTS: FIXED samples, the last padded, for a
    fixed-batch model; else up to SIZE."""
    n = len(next(iter(inputs.values())))
    step = fixed or size
    for i in range(0, n, step):
        real = min(step, n - i)
        idx = np.minimum(np.arange(i, i + step), n - 1) if fixed and real < step else slice(i, i + step)
        batch = {k: v[idx] for k, v in inputs.items()}
        yield (_laid_out(batch, inputs.axes) if isinstance(inputs, Stacked) else batch), real


def outputs(
    run: Callable[[Feeds], list[np.ndarray]],
    inputs: Feeds,
    fixed: int | None,
    size: int = 32,
    advance: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Every output of RUN over INPUTS in `batches`, joined (`join`); ADVANCE(real samples) after
    each batch (a progress bar)."""

    def runs() -> Iterator[tuple[list[np.ndarray], int]]:
        for feeds, real in batches(inputs, fixed, size):
            yield run(feeds), real
            if advance is not None:
                advance(real)

    return join(runs(), fixed)


def join(runs: Iterable[tuple[list[np.ndarray], int]], fixed: int | None) -> list[np.ndarray]:
    """The outputs of RUNS ((outputs, real samples) per batch) samples first (`_batch_axes`: a
    time-major [T, N, C] output too), the padding's outputs dropped, concatenated."""
    chunks: list[list[np.ndarray]] = []
    axes: list[int] = []
    for out, real in runs:
        axes = _batch_axes(out, fixed or real, axes)
        out = [np.moveaxis(o, a, 0) if a else o for o, a in zip(out, axes, strict=True)]
        chunks.append([o[:real] for o in out] if fixed and real < fixed else out)
    if len(chunks) == 1:  # one run: nothing to join (and a 0-d output could not be)
        return list(chunks[0])
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def _batch_axes(out: list[np.ndarray], n: int, before: list[int]) -> list[int]:
    """Where each output of a run on N samples has them: where it had them in the run BEFORE if
    that axis is N long, else its first axis that is (a recurrent state [2, N, 64] out: 1), else 0."""
    axes = []
    for k, o in enumerate(out):
        prior = before[k] if k < len(before) else 0
        if o.ndim > prior and o.shape[prior] == n:
            axes.append(prior)
        else:
            axes.append(next((i for i, d in enumerate(o.shape) if d == n), 0))
    return axes
