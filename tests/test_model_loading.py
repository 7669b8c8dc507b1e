"""`load_model` on every model file format a user may have, written here by real torch savers."""

from __future__ import annotations

import textwrap

import numpy as np
import onnx
import pytest
import torch
from models import resnet_blocks, transformer_ids, two_in_two_out

from edgekit.errors import EdgekitError
from edgekit.export.onnx import ExportConfig, export, verify
from edgekit.model import BATCH, LoadOptions, example_inputs, load_model, run_torch

RESNET_SHAPE = (1, 3, 32, 32)


def same_outputs(loaded, reference: torch.nn.Module, batch: int = 2) -> None:
    """The loaded module computes what the original computes (on the loaded spec's inputs)."""
    feeds = example_inputs(loaded.input_spec, batch=batch, seed=5)
    got = run_torch(loaded.module, feeds, loaded.input_spec)
    ref = run_torch(reference, feeds, loaded.input_spec)
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def write_arch_module(tmp_path, monkeypatch, name: str) -> None:
    """An importable `name.py` whose factories build the test architectures (weights unset)."""
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from models import TinyResNet, TwoInTwoOut, TinyTokenClassifier

            def resnet():
                return TinyResNet()

            def two_inputs():
                return TwoInTwoOut()

            def token_classifier():
                return TinyTokenClassifier()

            def not_a_module():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))


# TorchScript


def test_torchscript_needs_input_shape(tmp_path):
    module, _ = resnet_blocks()
    torch.jit.save(torch.jit.script(module), tmp_path / "m.pt")
    with pytest.raises(EdgekitError, match="--input-shape"):
        load_model(tmp_path / "m.pt", LoadOptions())


def test_torchscript_loads_exports_and_verifies(tmp_path):
    module, shapes = two_in_two_out()
    args = tuple(torch.randn(2, *s[1:]) for s in shapes)
    torch.jit.save(torch.jit.trace(module, args), tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt", LoadOptions(input_shapes=tuple(shapes)))
    assert loaded.source.kind == "torchscript"
    assert isinstance(loaded.module, torch.jit.ScriptModule)
    assert loaded.input_spec.names == ["image", "extra"]  # forward's parameter names
    assert [t.shape for t in loaded.input_spec.inputs] == [[BATCH, 3, 16, 16], [BATCH, 6]]
    same_outputs(loaded, module)
    path = export(loaded.module, loaded.input_spec, tmp_path, ExportConfig(), 2)
    result = verify(
        loaded.module, path, loaded.input_spec, example_inputs(loaded.input_spec, 3), ExportConfig()
    )
    assert list(result["outputs"]) == ["output_0", "output_1"]


# torch.export (.pt2)


def test_pt2_with_dynamic_batch_keeps_it(tmp_path):
    module, shapes = two_in_two_out()
    args = tuple(torch.randn(2, *s[1:]) for s in shapes)
    batch = torch.export.Dim("batch")
    ep = torch.export.export(module, args, dynamic_shapes={"image": {0: batch}, "extra": {0: batch}})
    torch.export.save(ep, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2", LoadOptions())
    assert loaded.source.kind == "torch.export"
    assert loaded.program is not None
    assert loaded.input_spec.names == ["image", "extra"]
    assert [t.shape for t in loaded.input_spec.inputs] == [[BATCH, 3, 16, 16], [BATCH, 6]]
    assert loaded.input_spec.fixed_batch is None
    same_outputs(loaded, module, batch=3)
    path = export(loaded.module, loaded.input_spec, tmp_path, ExportConfig(), 2, loaded.program)
    dims = [i.type.tensor_type.shape.dim[0] for i in onnx.load(str(path)).graph.input]
    assert all(d.dim_param for d in dims)
    verify(loaded.module, path, loaded.input_spec, example_inputs(loaded.input_spec, 3), ExportConfig())


def test_pt2_without_dim_has_a_fixed_batch(tmp_path):
    module, _ = resnet_blocks()
    ep = torch.export.export(module, (torch.randn(2, 3, 32, 32),))
    torch.export.save(ep, tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2", LoadOptions())
    assert loaded.input_spec.inputs[0].shape == [2, 3, 32, 32]
    assert loaded.input_spec.fixed_batch == 2
    assert loaded.input_spec.names == ["x"]
    same_outputs(loaded, module, batch=2)


def test_pt2_keeps_integer_input_dtype(tmp_path):
    module, shapes = transformer_ids()
    ids = torch.randint(0, 50, (2, shapes[0][1]))
    batch = torch.export.Dim("batch")
    torch.export.save(
        torch.export.export(module, (ids,), dynamic_shapes={"input_ids": {0: batch}}), tmp_path / "m.pt2"
    )
    loaded = load_model(tmp_path / "m.pt2", LoadOptions())
    assert loaded.input_spec.inputs[0].model_dump() == {
        "name": "input_ids",
        "shape": [BATCH, 16],
        "dtype": "int64",
    }


# state_dict + --arch


def test_state_dict_with_arch(tmp_path, monkeypatch):
    write_arch_module(tmp_path, monkeypatch, "arch_sd")
    module, _ = resnet_blocks(seed=4)
    torch.save(module.state_dict(), tmp_path / "w.pt")
    loaded = load_model(tmp_path / "w.pt", LoadOptions(arch="arch_sd:resnet", input_shapes=(RESNET_SHAPE,)))
    assert loaded.source.kind == "state_dict"
    assert loaded.input_spec.names == ["x"]
    assert loaded.input_spec.inputs[0].shape == [BATCH, 3, 32, 32]
    assert not loaded.module.training, "loaded in train mode: BatchNorm would use batch statistics"
    same_outputs(loaded, module)


def test_state_dict_saved_from_data_parallel_loads(tmp_path, monkeypatch):
    # a checkpoint saved from nn.DataParallel / DistributedDataParallel: every key has `module.`
    write_arch_module(tmp_path, monkeypatch, "arch_dp")
    module, _ = resnet_blocks(seed=6)
    torch.save(torch.nn.DataParallel(module).state_dict(), tmp_path / "dp.pt")
    loaded = load_model(tmp_path / "dp.pt", LoadOptions(arch="arch_dp:resnet", input_shapes=(RESNET_SHAPE,)))
    same_outputs(loaded, module)


def test_state_dict_without_arch_asks_for_it(tmp_path):
    module, _ = resnet_blocks()
    torch.save(module.state_dict(), tmp_path / "w.pt")
    with pytest.raises(EdgekitError, match="--arch"):
        load_model(tmp_path / "w.pt", LoadOptions(input_shapes=(RESNET_SHAPE,)))


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model"])
def test_checkpoint_dict(tmp_path, monkeypatch, key):
    write_arch_module(tmp_path, monkeypatch, f"arch_ckpt_{key}")
    module, _ = resnet_blocks(seed=5)
    torch.save({key: module.state_dict(), "epoch": 7, "best_top1": 0.5}, tmp_path / "ckpt.pt")
    opts = LoadOptions(arch=f"arch_ckpt_{key}:resnet", input_shapes=(RESNET_SHAPE,))
    loaded = load_model(tmp_path / "ckpt.pt", opts)
    assert loaded.source.kind == "state_dict"
    same_outputs(loaded, module)


def test_a_training_checkpoint_loads_its_models_weights_and_says_what_it_left_out(tmp_path, monkeypatch):
    # Resemblyzer's pretrained.pt: {step, model_state (with its loss's two parameters), optimizer_state}
    write_arch_module(tmp_path, monkeypatch, "arch_train_ckpt")
    module, _ = resnet_blocks(seed=8)
    state = {**module.state_dict(), "similarity_weight": torch.ones(1), "similarity_bias": torch.zeros(1)}
    optimizer = torch.optim.Adam(module.parameters())
    module(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    checkpoint = {"step": 100, "model_state": state, "optimizer_state": optimizer.state_dict()}
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    opts = LoadOptions(arch="arch_train_ckpt:resnet", input_shapes=(RESNET_SHAPE,))
    loaded = load_model(tmp_path / "ckpt.pt", opts)
    assert loaded.source.left_out == ["similarity_bias", "similarity_weight"]
    same_outputs(loaded, module)
    # a parameter of --arch missing from the file is still refused
    del state["linear.weight" if "linear.weight" in state else next(iter(module.state_dict()))]
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    with pytest.raises(EdgekitError, match="do not fit"):
        load_model(tmp_path / "ckpt.pt", opts)


def test_a_checkpoint_of_two_unnamed_state_dicts_is_not_guessed(tmp_path, monkeypatch):
    write_arch_module(tmp_path, monkeypatch, "arch_two_ckpt")
    module, _ = resnet_blocks(seed=9)
    torch.save({"student": module.state_dict(), "teacher": module.state_dict()}, tmp_path / "ckpt.pt")
    with pytest.raises(EdgekitError, match=r"several state_dicts \(student, teacher\)"):
        load_model(
            tmp_path / "ckpt.pt", LoadOptions(arch="arch_two_ckpt:resnet", input_shapes=(RESNET_SHAPE,))
        )


def test_arch_input_names_and_dtypes(tmp_path, monkeypatch):
    write_arch_module(tmp_path, monkeypatch, "arch_names")
    two, shapes = two_in_two_out(seed=2)
    torch.save(two.state_dict(), tmp_path / "two.pt")
    loaded = load_model(
        tmp_path / "two.pt", LoadOptions(arch="arch_names:two_inputs", input_shapes=tuple(shapes))
    )
    assert loaded.input_spec.names == ["image", "extra"]
    same_outputs(loaded, two)

    ids, shapes = transformer_ids(seed=2)
    torch.save(ids.state_dict(), tmp_path / "ids.pt")
    opts = LoadOptions(arch="arch_names:token_classifier", input_shapes=tuple(shapes), input_dtype="int64")
    loaded = load_model(tmp_path / "ids.pt", opts)
    assert loaded.input_spec.inputs[0].model_dump() == {
        "name": "input_ids",
        "shape": [BATCH, 16],
        "dtype": "int64",
    }


def test_arch_that_is_not_a_module_factory(tmp_path, monkeypatch):
    write_arch_module(tmp_path, monkeypatch, "arch_bad")
    module, _ = resnet_blocks()
    torch.save(module.state_dict(), tmp_path / "w.pt")
    with pytest.raises(EdgekitError, match=r"not an nn\.Module"):
        load_model(tmp_path / "w.pt", LoadOptions(arch="arch_bad:not_a_module", input_shapes=(RESNET_SHAPE,)))
    with pytest.raises(EdgekitError, match="do not fit"):
        load_model(tmp_path / "w.pt", LoadOptions(arch="arch_bad:two_inputs", input_shapes=(RESNET_SHAPE,)))


# ONNX


@pytest.fixture(scope="module")
def onnx_two_inputs(tmp_path_factory):
    """A two-input ONNX file with a dynamic batch, as edgekit's exporter writes it."""
    from edgekit.artifact import InputSpec, TensorSpec

    module, shapes = two_in_two_out()
    spec = InputSpec(
        inputs=[
            TensorSpec(name="image", shape=[BATCH, *shapes[0][1:]]),
            TensorSpec(name="extra", shape=[BATCH, *shapes[1][1:]]),
        ]
    )
    return export(module, spec, tmp_path_factory.mktemp("onnx"), ExportConfig(), 2)


def test_onnx_spec_comes_from_the_graph(onnx_two_inputs):
    loaded = load_model(onnx_two_inputs, LoadOptions())
    assert loaded.is_onnx and loaded.module is None
    assert loaded.source.kind == "onnx"
    assert loaded.input_spec.names == ["image", "extra"]
    shapes = [t.shape for t in loaded.input_spec.inputs]
    assert all(isinstance(s[0], str) for s in shapes)
    assert [s[1:] for s in shapes] == [[3, 16, 16], [6]]
    assert [t.dtype for t in loaded.input_spec.inputs] == ["float32", "float32"]


def test_onnx_input_shape_that_fits(onnx_two_inputs):
    shapes = ((4, 3, 16, 16), (4, 6))
    loaded = load_model(onnx_two_inputs, LoadOptions(input_shapes=shapes))
    assert loaded.input_spec.fixed_batch is None, "the batch stays dynamic without --static-batch"
    loaded = load_model(onnx_two_inputs, LoadOptions(input_shapes=shapes, static_batch=True))
    assert [t.shape for t in loaded.input_spec.inputs] == [[4, 3, 16, 16], [4, 6]]


@pytest.mark.parametrize(
    ("shapes", "batch"), [((), 1), (((4, 3, 16, 16), (4, 6)), 4)], ids=["no-shape", "input-shape"]
)
def test_onnx_static_batch_is_fixed_in_the_copied_graph(onnx_two_inputs, tmp_path, shapes, batch):
    """--static-batch on an ONNX input fixes the batch in the artifact's graph, not only the spec."""
    import onnxruntime

    from edgekit.export.onnx import copy_onnx

    loaded = load_model(onnx_two_inputs, LoadOptions(input_shapes=shapes, static_batch=True))
    assert loaded.input_spec.fixed_batch == batch
    graph = onnx.load(str(copy_onnx(onnx_two_inputs, tmp_path, loaded.input_spec))).graph
    for vi in [*graph.input, *graph.output]:
        first = vi.type.tensor_type.shape.dim[0]
        assert first.dim_value == batch and not first.dim_param, vi.name
    sess = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    feeds = example_inputs(loaded.input_spec, batch=batch)
    assert [o.shape[0] for o in sess.run(None, feeds)] == [batch, batch]
    too_big = {t.name: np.zeros((batch + 1, *t.shape[1:]), np.float32) for t in loaded.input_spec.inputs}
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument):
        sess.run(None, too_big)


@pytest.mark.parametrize(
    "shapes",
    [((1, 3, 32, 32), (1, 6)), ((1, 3, 16, 16), (1, 6, 1)), ((1, 3, 16, 16),)],
    ids=["wrong-size", "wrong-rank", "too-few"],
)
def test_onnx_input_shape_that_contradicts_the_graph(onnx_two_inputs, shapes):
    with pytest.raises(EdgekitError) as err:
        load_model(onnx_two_inputs, LoadOptions(input_shapes=shapes))
    assert str(onnx_two_inputs) in str(err.value)


# pickled nn.Module


def test_pickle_refused_without_trust(tmp_path):
    module, _ = resnet_blocks()
    torch.save(module, tmp_path / "full.pt")
    with pytest.raises(EdgekitError, match="--trust-pickle"):
        load_model(tmp_path / "full.pt", LoadOptions(input_shapes=(RESNET_SHAPE,)))


def test_pickle_loaded_with_trust(tmp_path):
    module, _ = resnet_blocks(seed=6)
    torch.save(module, tmp_path / "full.pt")
    loaded = load_model(tmp_path / "full.pt", LoadOptions(trust_pickle=True, input_shapes=(RESNET_SHAPE,)))
    assert loaded.source.kind == "pickle"
    assert loaded.input_spec.names == ["x"]
    assert not loaded.module.training
    same_outputs(loaded, module)


def test_source_records_path_and_hash(tmp_path):
    import hashlib

    module, _ = resnet_blocks()
    torch.save(module, tmp_path / "full.pt")
    loaded = load_model(tmp_path / "full.pt", LoadOptions(trust_pickle=True, input_shapes=(RESNET_SHAPE,)))
    assert loaded.source.path == str((tmp_path / "full.pt").absolute())
    assert loaded.source.sha256 == hashlib.sha256((tmp_path / "full.pt").read_bytes()).hexdigest()


# input shapes by input name (`--input-shape image:4,3,16,16`, trtexec's form)


def test_onnx_input_shapes_by_name_fit_each_input_whatever_their_order(onnx_two_inputs):
    """Named shapes go to the inputs of those names, in any order; positional ones go by order."""
    positional = LoadOptions(input_shapes=["4,3,16,16", "4,6"], static_batch=True)
    for shapes in (["extra:4,6", "image:4,3,16,16"], {"extra": [4, 6], "image": [4, 3, 16, 16]}):
        named = LoadOptions(input_shapes=shapes, static_batch=True)
        for opts in (positional, named):
            loaded = load_model(onnx_two_inputs, opts)
            assert loaded.input_spec.names == ["image", "extra"]
            assert [t.shape for t in loaded.input_spec.inputs] == [[4, 3, 16, 16], [4, 6]]


def test_onnx_input_shape_naming_no_input_lists_the_inputs(onnx_two_inputs):
    with pytest.raises(EdgekitError) as err:
        load_model(onnx_two_inputs, LoadOptions(input_shapes=["image:1,3,16,16", "mask:1,6"]))
    message = str(err.value)
    assert "'mask', which is not an input of" in message and "its inputs: image, extra." in message


def test_onnx_input_shape_naming_one_input_keeps_the_others_declared(onnx_two_inputs):
    """An ONNX file declares its inputs' shapes: the one --input-shape names takes the sizes given,
    the other keeps its own (a torch model, which declares none, needs every input named)."""
    declared = load_model(onnx_two_inputs, LoadOptions()).input_spec.inputs[0].shape
    spec = load_model(onnx_two_inputs, LoadOptions(input_shapes=["extra:1,6"])).input_spec
    assert [t.shape for t in spec.inputs] == [declared, [declared[0], 6]]


def test_torch_input_shapes_by_name_fit_each_input_whatever_their_order(tmp_path, monkeypatch):
    write_arch_module(tmp_path, monkeypatch, "arch_named")
    two, _ = two_in_two_out(seed=3)
    torch.save(two.state_dict(), tmp_path / "two.pt")
    arch = "arch_named:two_inputs"
    for shapes in (["1,3,16,16", "1,6"], ["extra:1,6", "image:1,3,16,16"]):
        loaded = load_model(tmp_path / "two.pt", LoadOptions(arch=arch, input_shapes=shapes))
        assert loaded.input_spec.names == ["image", "extra"]
        assert [t.shape[1:] for t in loaded.input_spec.inputs] == [[3, 16, 16], [6]]
        same_outputs(loaded, two)
    with pytest.raises(EdgekitError, match=r"'mask', which is not an input of .*its inputs: image, extra"):
        load_model(tmp_path / "two.pt", LoadOptions(arch=arch, input_shapes=["image:1,3,16,16", "mask:1,6"]))
    with pytest.raises(EdgekitError, match="gives no shape for the input 'image'"):  # torch declares none
        load_model(tmp_path / "two.pt", LoadOptions(arch=arch, input_shapes=["extra:1,6"]))


def test_a_single_shape_is_the_one_inputs():
    """[1, 3, 32, 32] is one input's shape, as a user writes it for a single-input model."""
    assert LoadOptions(input_shapes=RESNET_SHAPE).input_shapes == [list(RESNET_SHAPE)]
    assert LoadOptions(input_shapes=[list(RESNET_SHAPE)]).input_shapes == [list(RESNET_SHAPE)]
