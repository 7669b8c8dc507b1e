"""Feed many samples to a model in the batches it accepts.

A model with a fixed batch B (a .pt2 exported without a dynamic batch, `--static-batch`, an ONNX
file whose first axis is a number) takes exactly B samples per run: its data goes in batches of B,
the last one padded by repeating its last sample, and the padding's outputs are dropped. A model
with a dynamic batch gets batches of up to SIZE, unpadded. Every stage that runs a model on data
batches here; the benchmark worker imports it too, so it needs numpy only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

Feeds = dict[str, np.ndarray]


def batches(inputs: Feeds, fixed: int | None, size: int = 32) -> Iterator[tuple[Feeds, int]]:
    """(feeds, real samples in them) for each batch of INPUTS: FIXED samples, the last padded, for a
    fixed-batch model; else up to SIZE."""
    n = len(next(iter(inputs.values())))
    step = fixed or size
    for i in range(0, n, step):
        real = min(step, n - i)
        idx = np.minimum(np.arange(i, i + step), n - 1) if fixed and real < step else slice(i, i + step)
        yield {k: v[idx] for k, v in inputs.items()}, real


def outputs(
    run: Callable[[Feeds], list[np.ndarray]],
    inputs: Feeds,
    fixed: int | None,
    size: int = 32,
    advance: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """Every output of RUN over INPUTS in `batches`, the padding's outputs dropped, concatenated;
    ADVANCE(real samples) after each batch (a progress bar)."""
    chunks = []
    for feeds, real in batches(inputs, fixed, size):
        out = run(feeds)
        chunks.append([o[:real] for o in out] if fixed and real < fixed else out)
        if advance is not None:
            advance(real)
    if len(chunks) == 1:  # one run: nothing to join (and a 0-d output could not be)
        return list(chunks[0])
    return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]
