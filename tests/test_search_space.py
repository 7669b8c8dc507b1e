"""The search section of edgekit.yaml: each point of the space as the chain it runs, points that run
the same chain as one candidate, the Pareto front, and every mistake in the section as one sentence
naming its line (exit 2 from `edgekit search`)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from edgekit import pareto
from edgekit import search_space as space
from edgekit.config import load
from edgekit.errors import EdgekitError
from edgekit.passes import Step, config

HEAD = """\
model:
  path: m.onnx
data:
  calibration: random
  evaluation: random
variants:
  fp32: []
  q:
    - prune: {ratio: 0.25}
    - int8: {calibration: minmax}
targets:
  - name: cpu
    variants: [fp32]
"""


def _config(tmp_path: Path, search: str) -> Path:
    (tmp_path / "m.onnx").write_bytes(b"")
    path = tmp_path / "edgekit.yaml"
    path.write_text(HEAD + "search:\n" + textwrap.indent(textwrap.dedent(search), "  "))
    return path


def test_a_point_edits_the_base_chain_and_keys_of_passes_it_does_not_run_are_moot():
    base = [Step("prune", config("prune", ratio=0.25)), Step("int8", config("int8", calibration="minmax"))]
    chain = space.chain_of(base, {"int8.calibration": "mse", "prune.ratio": 0.5})
    assert [(s.name, s.config.model_dump(exclude_defaults=True)) for s in chain] == [
        ("prune", {"ratio": 0.5}),
        ("int8", {"calibration": "mse"}),
    ]
    fp16 = space.chain_of(base, {"precision": "fp16", "int8.calibration": "mse"})
    assert [s.name for s in fp16] == ["prune", "fp16"]
    assert space.chain_of(base, {"prune.ratio": None}) == [base[1]]  # null leaves the pass out
    mixed = space.chain_of([], {"precision": "int8", "mixed.max_accuracy_drop": 1.0})
    assert [s.name for s in mixed] == ["int8", "mixed"]


def test_points_that_run_the_same_chain_are_one_candidate(tmp_path):
    cfg = load(
        _config(
            tmp_path,
            """\
        target: cpu
        space:
          precision: [fp32, int8]
          int8.percentile: {low: 99.9, high: 99.99, step: 0.09}
        """,
        )
    )
    keys = {space.key(space.chain_of([], p), "ort") for p in space.grid(cfg.search)}
    assert len(space.grid(cfg.search)) == 4 and len(keys) == 3  # fp32 twice, int8 at two percentiles


def test_the_front_keeps_what_nothing_beats_on_every_objective():
    points = {"a": (1.0, 5.0), "b": (2.0, 1.0), "c": (2.0, 5.0), "d": (1.0, 5.0), "e": (3.0, 0.5)}
    assert pareto.front(points) == ["a", "b", "d", "e"]  # c: beaten by a; a and d tie, both kept


@pytest.mark.parametrize(
    ("search", "says"),
    [
        ("target: gpu\nspace: {precision: [int8]}\n", "'gpu' is not a target; accepted: cpu"),
        ("target: cpu\nspace: {int8.nope: [1]}\n", "int8 has no key 'nope'"),
        ("target: cpu\nspace: {quantize.x: [1]}\n", "is not PASS.KEY of a compress pass"),
        (
            "target: cpu\nspace: {precision: [int4]}\n",
            "space.precision takes fp32, int8, fp16, bf16, not 'int4'",
        ),
        ("target: cpu\nspace: {int8.percentile: [50]}\n", "int8 percentile: input should be greater than 90"),
        ("target: cpu\nspace: {int8.percentile: {low: 99, high: 99.9}}\n", "a grid needs a step"),
        ("target: cpu\nbase: nope\nspace: {precision: [int8]}\n", "'nope' is not a variant"),
        ("target: cpu\nalgorithm: optuna\nspace: {precision: [int8]}\n", "optuna needs samples"),
    ],
)
def test_a_mistake_in_the_search_section_is_one_sentence_with_its_line(tmp_path, search, says):
    with pytest.raises(EdgekitError, match=None) as e:
        load(_config(tmp_path, search))
    message = str(e.value)
    assert says in message and message.startswith("edgekit.yaml line ")
    assert "\n" not in message


def test_a_bf16_point_outside_openvino_is_refused_before_it_runs():
    assert "OpenVINO" in space.problem(space.chain_of([], {"precision": "bf16"}), "ort")
    assert space.problem(space.chain_of([], {"precision": "bf16"}), "openvino") is None
