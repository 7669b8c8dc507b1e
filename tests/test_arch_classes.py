"""Architecture classes that broke `compress --int8` (bench/arch_sweep.py, randomly initialised
`transformers` models as each exporter writes them): each compresses, exit 0, to an INT8 model
ONNX Runtime loads with its optimizations on."""

from __future__ import annotations

import sys
from pathlib import Path

import onnxruntime as ort
import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("transformers", reason="the zoo's transformers is not installed: run `make zoo`")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import arch_sweep  # noqa: E402


@pytest.mark.parametrize(
    ("name", "exporter", "broke"),
    [
        ("mobilevit", "legacy", "activations of 1e-41: denormal histogram bins"),
        ("wav2vec2", "dynamo", "ORT's MatMul + Add fusion reused a name pre-processing had created"),
        ("distilbert", "dynamo", "the same"),
    ],
)
def test_a_class_that_broke_compresses_and_loads(name, exporter, broke, tmp_path):
    path = tmp_path / f"{name}.onnx"
    shapes = arch_sweep.export(name, path, exporter == "dynamo")
    row = arch_sweep.compress(path, shapes, tmp_path / "int8")
    assert row["exit_code"] == 0, (broke, row["said"])
    assert row["ort_warnings"] == 0
    ort.InferenceSession(str(tmp_path / "int8" / "model.onnx"), providers=["CPUExecutionProvider"])
