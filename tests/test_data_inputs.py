"""Models whose inputs are not one batch-first tensor: a streaming speech model with audio, a
recurrent state whose batch axis is the second, and a scalar int64 sample rate."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from hostile import assert_refused, hashes_of

from tests.models import SPEECH_HIDDEN as HIDDEN
from tests.models import SPEECH_LENGTH as LENGTH
from tests.models import speech_model

SAMPLES = 40


def _data(n=SAMPLES):
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((n, LENGTH)).astype(np.float32)
    state = rng.standard_normal((2, n, HIDDEN)).astype(np.float32)
    return audio, state


@pytest.fixture
def speech(work):
    return speech_model(work / "speech.onnx")


def test_constant_and_batch_axis(edgekit, speech, work):
    """--batch-axis state=1 and --calib-const sr=16000 calibrate a three-input model; the manifest
    records the constant and the verification."""
    audio, state = _data()
    np.savez(work / "data.npz", audio=audio, state=state)
    out = work / "out"
    r = edgekit(
        "compress", speech, "--int8", "--calib", work / "data.npz", "--batch-axis", "state=1",
        "--calib-const", "sr=16000", "-o", out,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["data"]["calibration"]["constants"] == {"sr": 16000}
    assert {"export", "int8"} <= set(manifest["verification"]), manifest["verification"]
    spec = {t["name"]: t for t in manifest["input_spec"]["inputs"]}
    assert [spec[n].get("batch_axis", 0) for n in ("audio", "state", "sr")] == [0, 1, None]


def test_npz_records_constant_and_axis(edgekit, speech, work):
    """A 0-d array in the .npz is a constant; `state.batch_axis` says where its samples are."""
    audio, state = _data()
    arrays = {"audio": audio, "state": state, "sr": np.int64(16000), "state.batch_axis": 1}
    np.savez(work / "data.npz", **arrays)
    r = edgekit("compress", speech, "--int8", "--calib", work / "data.npz", "-o", work / "out")
    assert r.returncode == 0, r.stderr


def test_per_sample_dicts(edgekit, speech, work):
    """`module:function` may yield one {input: array} dict per sample, without the batch axis."""
    (work / "speech_data.py").write_text(
        "import numpy as np\n"
        "def samples():\n"
        "    rng = np.random.default_rng(2)\n"
        f"    for _ in range({SAMPLES}):\n"
        f"        yield {{'audio': rng.standard_normal({LENGTH}).astype('float32'),\n"
        f"               'state': rng.standard_normal((2, {HIDDEN})).astype('float32'), 'sr': 16000}}\n"
    )
    r = edgekit("compress", speech, "--int8", "--calib", "speech_data:samples", "-o", work / "out", cwd=work)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((work / "out" / "edgekit.json").read_text())
    assert manifest["data"]["calibration"]["kind"] == "function"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--calib-const", "rate=16000"], "'rate'"),
        (["--calib-const", "sr=16000.5"], "int64"),
        (["--batch-axis", "state=3"], "out of range"),
    ],
)
def test_bad_inputs_refused(edgekit, speech, work, flags, named):
    """A constant or batch axis that does not fit the model is one sentence naming it, exit 2."""
    audio, state = _data()
    data = work / "data.npz"
    np.savez(data, audio=audio, state=state)
    args = ["--batch-axis", "state=1", "--calib-const", "sr=16000", *flags]
    out = work / "out"
    r = edgekit("compress", speech, "--int8", "--calib", data, *args, "-o", out)
    assert named in assert_refused(r, out, [data, speech], hashes_of(data, speech))


def test_scalar_without_constant_refused(edgekit, speech, work):
    """A scalar input is fed as it is: data that gives it a different value per sample is refused,
    saying how to give it once."""
    audio, state = _data()
    data = work / "data.npz"
    np.savez(data, audio=audio, state=state, sr=np.arange(SAMPLES))
    r = edgekit("compress", speech, "--int8", "--calib", data, "-o", work / "out")
    assert "--calib-const sr=VALUE" in assert_refused(r, work / "out", [data], hashes_of(data))


SPEECH_NET = f'''
import torch
from torch import nn


class Speech(nn.Module):
    """out[N, 10] from audio [N, {LENGTH}] and a state [2, N, {HIDDEN}] whose batch axis is the second."""

    def __init__(self):
        super().__init__()
        self.audio = nn.Linear({LENGTH}, {HIDDEN})
        self.head = nn.Linear({HIDDEN}, 10)

    def forward(self, audio, state):
        return self.head(torch.relu(self.audio(audio) + state.mean(0)))


def net():
    torch.manual_seed(0)
    return Speech()
'''


def test_torch_model_with_batch_on_second_axis(edgekit, work):
    """A torch state_dict with --arch, --input-shape by name and --batch-axis state=1: exported with
    the dynamic batch on the state's second axis, calibrated on .npz data laid out the same way."""

    import onnx
    import torch

    (work / "speechnet.py").write_text(SPEECH_NET)
    spec = importlib.util.spec_from_file_location("speechnet", work / "speechnet.py")
    speechnet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speechnet)
    torch.save(speechnet.net().state_dict(), work / "speech.pt")
    audio, state = _data()
    np.savez(work / "data.npz", audio=audio, state=state)
    out = work / "out"
    r = edgekit(
        "compress", work / "speech.pt", "--arch", "speechnet:net", "--input-shape", f"audio:1,{LENGTH}",
        "--input-shape", f"state:2,1,{HIDDEN}", "--batch-axis", "state=1", "--int8",
        "--calib", work / "data.npz", "-o", out, cwd=work,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    graph = onnx.load(str(out / "model.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims == {"audio": ["batch", LENGTH], "state": [2, "batch", HIDDEN]}
    manifest = json.loads((out / "edgekit.json").read_text())
    assert manifest["verification"]["int8"]["samples"] > 0


TAGGER_NET = '''
import torch
from torch import nn


class Tagger(nn.Module):
    """Scores [N, 5] from features [N, 8] (float) and token ids [N, 4] (int64)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, feats, ids):
        return self.head(torch.relu(feats + self.embed(ids).mean(1)))


def net():
    torch.manual_seed(0)
    return Tagger()
'''


@pytest.mark.parametrize(
    ("dtype", "said"), [(None, None), ("idz=int64", "'idz', which is not an input"), ("ids=int8", "int8")]
)
def test_torch_inputs_of_mixed_dtypes(edgekit, work, dtype, said):
    """--input-dtype NAME=DTYPE types one input of a torch model given by --input-shape; a name that
    is no input, or a dtype edgekit does not take, is one sentence."""
    import onnx
    import torch

    (work / "taggernet.py").write_text(TAGGER_NET)
    spec = importlib.util.spec_from_file_location("taggernet", work / "taggernet.py")
    taggernet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(taggernet)
    torch.save(taggernet.net().state_dict(), work / "tagger.pt")
    rng = np.random.default_rng(0)
    feats, ids = rng.standard_normal((40, 8)).astype(np.float32), rng.integers(0, 50, (40, 4))
    np.savez(work / "data.npz", feats=feats, ids=ids)
    out, before = work / "out", hashes_of(work / "tagger.pt")
    r = edgekit(
        "compress", work / "tagger.pt", "--arch", "taggernet:net", "--input-shape", "feats:1,8",
        "--input-shape", "ids:1,4", "--input-dtype", dtype or "ids=int64", "--int8",
        "--calib", work / "data.npz", "-o", out, cwd=work,
    )  # fmt: skip
    if said:
        assert said in assert_refused(r, out, [work / "tagger.pt"], before)
        return
    assert r.returncode == 0, r.stderr
    graph = onnx.load(str(out / "model.onnx")).graph
    assert {i.name: i.type.tensor_type.elem_type for i in graph.input} == {
        "feats": onnx.TensorProto.FLOAT,
        "ids": onnx.TensorProto.INT64,
    }


def test_a_state_handed_back_on_its_batch_axis_is_gathered_samples_first():
    """Silero VAD returns its state [2, N, 128] beside [N, 1]: outputs over 70 samples in runs of 32
    come back samples first (the last run's 6 joined as the others), and a state is judged as
    other, not as a sequence of class scores."""
    from edgekit import batching
    from edgekit.benchmarks.metrics import output_kind

    audio, state = _data(70)
    inputs = batching.Stacked({"audio": audio, "state": np.moveaxis(state, 1, 0)}, {"state": 1})

    def run(feeds):
        return [feeds["audio"][:, :1], feeds["state"] * 2]  # [n, 1] and a state [2, n, 64]

    prob, new_state = batching.outputs(run, inputs, None, 32)
    assert prob.shape == (70, 1) and new_state.shape == (70, 2, HIDDEN)
    np.testing.assert_array_equal(new_state, np.moveaxis(state, 1, 0) * 2)
    assert output_kind(new_state, "stateN") == "other"


def test_a_state_with_unnamed_axes_gets_its_symbolic_axis_as_batch(work):
    """Silero VAD's default file: input [?, ?] and state [2, ?, 128], no axis named. The fixed 2
    cannot be a dynamic batch: the state's batch is its symbolic axis (it had been fed as axis 0,
    every calibration batch 2 samples of mixed-up state)."""
    import onnx

    from edgekit.model import LoadOptions, load_model

    model = onnx.load(str(speech_model(work / "named.onnx")))
    for vi in model.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.Clear()  # an unnamed symbolic axis, as some exporters write them
    onnx.save(model, str(work / "unnamed.onnx"))
    spec = load_model(work / "unnamed.onnx", LoadOptions()).input_spec
    assert [t.batch_axis for t in spec.inputs] == [0, 1, None]


def test_a_static_state_beside_a_batch_of_one_gets_its_axis_of_one_as_batch(edgekit, work):
    """Silero VAD's OpenVINO export: input [1, 300] and state [2, 1, 64], every axis fixed. The
    state's first axis, 2, is not the batch the other input has: its batch axis is its axis of size 1
    (fed on axis 0, every call gave it [1, 1, 64] and ONNX Runtime refused it)."""
    import onnx

    model = onnx.load(str(speech_model(work / "named.onnx")))
    for vi in model.graph.input:
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_value = 1  # the static export: N is 1 everywhere
    onnx.save(model, str(work / "static.onnx"))
    r = edgekit("compress", work / "static.onnx", "--int8", "--calib", "random", "--calib-size", "8",
                "--calib-const", "sr=16000", "-o", work / "out")  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((work / "out" / "edgekit.json").read_text())
    spec = {t["name"]: t for t in manifest["input_spec"]["inputs"]}
    assert [spec[n].get("batch_axis", 0) for n in ("audio", "state", "sr")] == [0, 1, None]
    # an OpenVINO build of it, verified on random inputs laid out the same way (fed samples-first,
    # the state's [1, 2, 64] had stopped it with a traceback)
    built = edgekit("build", work / "out", "--target", "openvino", "-o", work / "ir")
    assert built.returncode == 0, built.stderr


def test_input_shape_for_one_input_keeps_the_others_declared(edgekit, work):
    """Silero VAD's opset-18 export: input [batch, sequence], sr a scalar, state [2, batch, 128].
    --input-shape names only the input with an open axis; the state and the scalar keep the shapes
    the file declares (each had to be named). ONNX Runtime's own warnings (here: an initializer no
    node reads) stay off stderr, so a refusal is still one sentence."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(speech_model(work / "named.onnx")))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "sequence"
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), "unused"))
    onnx.save(model, str(work / "open.onnx"))
    base = ["compress", work / "open.onnx", "--int8", "--calib", "random", "--calib-size", "8"]
    refused = edgekit(*base, "--calib-const", "sr=16000", "-o", work / "refused")
    sentence = assert_refused(refused, work / "refused")
    assert "--input-shape audio:1,N " in sentence, sentence
    r = edgekit(*base, "--input-shape", f"audio:1,{LENGTH}", "--calib-const", "sr=16000", "-o", work / "out")
    assert r.returncode == 0, r.stderr
    assert "onnxruntime" not in r.stderr, r.stderr
    manifest = json.loads((work / "out" / "edgekit.json").read_text())
    spec = {t["name"]: t for t in manifest["input_spec"]["inputs"]}
    assert spec["state"]["shape"] == [2, "N", HIDDEN] and spec["sr"]["shape"] == []
    assert spec["audio"]["shape"] == ["N", LENGTH]


def test_bench_evaluates_each_artifact_on_its_own_inputs_and_batch_axes(edgekit, speech, work):
    """`bench --eval` with the speech model (its state batched on axis 1, sr a constant) beside a
    model that reads the audio only: each gets the samples of its own inputs (the first artifact's
    were reused: sr missing), and the state on its batch axis (it was fed samples-first)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    audio, state = _data()
    np.savez(work / "data.npz", audio=audio, state=state, sr=np.int64(16000), **{"state.batch_axis": 1})
    w = numpy_helper.from_array(np.full((LENGTH, 4), 0.01, np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["audio", "W"], ["out"])],
        "audio_only",
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", LENGTH])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), work / "audio.onnx")
    for name, model in (("audio", work / "audio.onnx"), ("speech", speech)):
        r = edgekit("compress", model, "--calib", work / "data.npz", "-o", work / name)
        assert r.returncode == 0, r.stderr
    r = edgekit("bench", work / "audio", work / "speech", "--seconds", "0.2", "--eval", work / "data.npz",
                "-o", work / "results")  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (work / "results" / "results.jsonl").read_text().splitlines()]
    assert [Path(r["artifact"]).name for r in records] == ["audio", "speech"]
    for record in records:
        assert not record.get("error"), record["error"]
        assert record["accuracy"]["samples"] == SAMPLES, record["accuracy"]


def test_bench_judges_the_fp32_reference_outputs_by_their_names_too(edgekit, work):
    """A voice detector's probability [N, 1] beside the state it hands back (stateN, [2, N, 16]):
    the INT8 row judged stateN as a state (other), by its name, while the fp32 row, whose artifact
    carries no check of its own, judged it by its values alone as a sequence of class scores. Every
    row now judges each output by the reference's names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 1)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "U"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
        helper.make_node("MatMul", ["x", "U"], ["drive"]),
        helper.make_node("Add", ["state", "drive"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["stateN"]),
    ]
    graph = helper.make_graph(
        nodes,
        "vad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 16]),
        ],
        [
            helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1]),
            helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, "N", 16]),
        ],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), work / "vad.onnx")
    x, state = rng.standard_normal((64, 8)), rng.standard_normal((2, 64, 16))
    np.savez(
        work / "data.npz", x=x.astype(np.float32), state=state.astype(np.float32), **{"state.batch_axis": 1}
    )
    for name, flags in (("fp32", []), ("int8", ["--int8"])):
        r = edgekit("compress", work / "vad.onnx", *flags, "--calib", work / "data.npz", "-o", work / name)
        assert r.returncode == 0, r.stderr
    r = edgekit("bench", work / "fp32", work / "int8", "--seconds", "0.2", "--eval", work / "data.npz",
                "-o", work / "results")  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in (work / "results" / "results.jsonl").read_text().splitlines()]
    kinds = {
        Path(r["artifact"]).name: [f["kind"] for f in r["accuracy"]["fidelity"].values()] for r in records
    }
    assert kinds == {"fp32": ["other", "other"], "int8": ["other", "other"]}, kinds
