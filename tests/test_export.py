"""torch -> ONNX export and its numeric verification, on real ONNX Runtime sessions.

SQNR thresholds (20·log10(‖torch‖/‖torch−onnx‖)): every model here measured 136–142 dB on the
2-core EPYC of FIELD-NOTES (onnxruntime 1.32, torch 2.13), i.e. fp32 round-off. A mistranslated
op lands far below 40 dB. The CNN bar is 60 dB, the order of verify's default tolerance (1e-3
relative). The transformer bar is 90 dB: softmax, LayerNorm and ORT's fused attention reorder fp32
sums, so it gets ~45 dB of margin for other CPUs' kernels, yet stays high enough to catch subtle
errors there (a LayerNorm epsilon or a mask that leaks by a small amount).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from models import VOCAB, depthwise_se, resnet_blocks, transformer, transformer_ids, two_in_two_out
from torch import nn

from edgekit.artifact import InputSpec, TensorSpec
from edgekit.benchmarks.metrics import sqnr_db
from edgekit.errors import EdgekitError, VerificationError
from edgekit.export.onnx import ExportConfig, export, output_names, verify
from edgekit.model import LoadOptions, load_model, run_torch


@dataclass(frozen=True)
class Case:
    name: str
    factory: Callable
    names: tuple[str, ...]
    dtypes: tuple[str, ...]
    outputs: int
    classifier: bool  # every output is class scores (N, classes)
    min_sqnr_db: float

    def spec(self) -> InputSpec:
        _, shapes = self.factory()
        return InputSpec(
            inputs=[
                TensorSpec(name=n, shape=["batch", *s[1:]], dtype=d)
                for n, s, d in zip(self.names, shapes, self.dtypes, strict=True)
            ]
        )


CASES = [
    Case("resnet", resnet_blocks, ("x",), ("float32",), 1, True, 60.0),
    Case("depthwise_se", depthwise_se, ("x",), ("float32",), 1, True, 60.0),
    Case("transformer", transformer, ("tokens",), ("float32",), 1, False, 90.0),
    Case("transformer_ids", transformer_ids, ("input_ids",), ("int64",), 1, True, 90.0),
    Case("two_in_two_out", two_in_two_out, ("image", "extra"), ("float32", "float32"), 2, False, 60.0),
]


def feeds_for(spec: InputSpec, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for t in spec.inputs:
        shape = t.concrete_shape(batch)
        if t.dtype == "int64":
            out[t.name] = rng.integers(0, VOCAB, size=shape, dtype=np.int64)
        else:
            out[t.name] = rng.standard_normal(shape).astype(np.float32)
    return out


@dataclass
class Exported:
    case: Case
    module: nn.Module
    spec: InputSpec
    path: object


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Callable[[Case], Exported]:
    """Export each model once per module, on first use."""
    cache: dict[str, Exported] = {}

    def get(case: Case) -> Exported:
        if case.name not in cache:
            module, _ = case.factory()
            spec = case.spec()
            path = export(module, spec, tmp_path_factory.mktemp(case.name), ExportConfig(), case.outputs)
            cache[case.name] = Exported(case, module, spec, path)
        return cache[case.name]

    return get


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def exported(request, exports) -> Exported:
    return exports(request.param)


def test_export_passes_checker_with_spec_names_and_dynamic_batch(exported):
    onnx.checker.check_model(str(exported.path), full_check=True)
    graph = onnx.load(str(exported.path)).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    assert [i.name for i in inputs] == exported.spec.names
    assert [o.name for o in graph.output] == output_names(exported.case.outputs)
    for vi, t in zip(inputs, exported.spec.inputs, strict=True):
        dims = vi.type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value"), f"{vi.name}: batch axis"
        assert [d.dim_value for d in dims[1:]] == t.shape[1:]
        assert onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name == t.dtype


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_runtime_matches_torch_at_any_batch(exported, batch):
    sess = onnxruntime.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    feeds = feeds_for(exported.spec, batch, seed=batch)
    got = sess.run(None, feeds)
    ref = run_torch(exported.module, feeds, exported.spec)
    assert len(got) == len(ref) == exported.case.outputs
    for r, g in zip(ref, got, strict=True):
        assert g.shape == r.shape and g.shape[0] == batch
        assert sqnr_db(r, g) >= exported.case.min_sqnr_db
        if exported.case.classifier:
            np.testing.assert_array_equal(g.argmax(1), r.argmax(1))


def test_verify_reports_every_output(exported):
    feeds = feeds_for(exported.spec, 8, seed=7)
    result = verify(exported.module, exported.path, exported.spec, feeds, ExportConfig())
    assert result["samples"] == 8
    assert list(result["outputs"]) == output_names(exported.case.outputs)
    for stats in result["outputs"].values():
        assert stats["sqnr_db"] >= exported.case.min_sqnr_db
        assert stats["relative_max_abs_diff"] <= ExportConfig().tolerance
        if exported.case.classifier:
            assert stats["top1_agreement"] == 1.0
    assert result["sqnr_db"] == min(s["sqnr_db"] for s in result["outputs"].values())


def _perturbed(module: nn.Module, submodule: str) -> nn.Module:
    """A copy whose `submodule` weights are shifted by ~20 % of their spread."""
    other = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        w = other.get_submodule(submodule).weight
        w.add_(torch.randn(w.shape, generator=gen) * 0.2 * w.std())
    return other


def test_verify_raises_when_onnx_diverges_naming_the_output(exports):
    ex = exports(CASES[0])
    feeds = feeds_for(ex.spec, 4)
    with pytest.raises(VerificationError, match=r"output\(s\) output \(") as err:
        verify(_perturbed(ex.module, "fc"), ex.path, ex.spec, feeds, ExportConfig())
    assert err.value.exit_code == 1 and isinstance(err.value, EdgekitError)


@pytest.mark.parametrize(
    ("submodule", "diverging", "matching"),
    [("classifier", ["output_0"], ["output_1"]), ("mix", ["output_0", "output_1"], [])],
)
def test_verify_names_only_the_diverging_outputs(exports, submodule, diverging, matching):
    exported = exports(CASES[-1])
    feeds = feeds_for(exported.spec, 4)
    with pytest.raises(VerificationError) as err:
        verify(_perturbed(exported.module, submodule), exported.path, exported.spec, feeds, ExportConfig())
    msg = str(err.value)
    named = msg.split("output(s) ", 1)[1].split(" (", 1)[0].split(", ")
    assert named == diverging
    assert not set(matching) & set(named)


def test_static_batch_gives_a_fixed_batch_dim(tmp_path):
    module, _ = resnet_blocks()
    torch.save(module, tmp_path / "model.pt")
    opts = LoadOptions(trust_pickle=True, input_shapes=((2, 3, 32, 32),), static_batch=True)
    loaded = load_model(tmp_path / "model.pt", opts)
    assert loaded.input_spec.inputs[0].shape == [2, 3, 32, 32]
    path = export(loaded.module, loaded.input_spec, tmp_path, ExportConfig(), 1)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 32, 32] and not dims[0].dim_param
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = feeds_for(loaded.input_spec, 2)
    assert sess.run(None, x)[0].shape == (2, 10)
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):
        sess.run(None, feeds_for(CASES[0].spec(), 3))


def test_static_batch_fixes_a_program_exported_with_a_dynamic_batch(tmp_path):
    module, _ = resnet_blocks()
    batch = torch.export.Dim("batch")
    ep = torch.export.export(module, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"x": {0: batch}})
    torch.export.save(ep, tmp_path / "model.pt2")
    loaded = load_model(tmp_path / "model.pt2", LoadOptions(static_batch=True))
    assert loaded.input_spec.inputs[0].shape == [1, 3, 32, 32]
    path = export(loaded.module, loaded.input_spec, tmp_path, ExportConfig(), 1, loaded.program)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32] and not dims[0].dim_param
    feeds = feeds_for(loaded.input_spec, 1)
    verify(loaded.module, path, loaded.input_spec, feeds, ExportConfig())


class Zeta(nn.Module):
    def forward(self, x):
        return torch.special.zeta(x.abs() + 2.0, 3.0)


class HasZeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), Zeta()))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.encoder(x))


def test_unsupported_operator_names_operator_and_submodule(tmp_path):
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", 4])])
    with pytest.raises(EdgekitError) as err:
        export(HasZeta().eval(), spec, tmp_path, ExportConfig(), 1)
    msg = str(err.value)
    assert "zeta" in msg
    assert "'encoder.1.1'" in msg and "Zeta" in msg
    assert not isinstance(err.value, VerificationError)
