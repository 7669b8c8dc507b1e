"""Models whose inputs are not one batch-first tensor: a streaming speech model with audio, a
recurrent state whose batch axis is the second, and a scalar int64 sample rate."""

import json

import numpy as np
import pytest
from hostile import assert_refused, hashes_of

SAMPLES, LENGTH, HIDDEN = 40, 300, 64


def _speech_model(path):
    """out[N, 10] = (audio @ W + mean(state over its first axis) * sr / 16000) @ V: every input matters."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((LENGTH, HIDDEN)).astype(np.float32) * 0.05, "W"),
        numpy_helper.from_array(rng.standard_normal((HIDDEN, 10)).astype(np.float32) * 0.2, "V"),
        numpy_helper.from_array(np.array(1 / 16000, np.float32), "per_hz"),
    ]
    nodes = [
        helper.make_node("MatMul", ["audio", "W"], ["h"]),
        helper.make_node("ReduceMean", ["state"], ["s"], axes=[0], keepdims=0),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["srf", "per_hz"], ["scale"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["h", "ss"], ["z"]),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("MatMul", ["r", "V"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "speech",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", LENGTH]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", HIDDEN]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _data(n=SAMPLES):
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((n, LENGTH)).astype(np.float32)
    state = rng.standard_normal((2, n, HIDDEN)).astype(np.float32)
    return audio, state


@pytest.fixture
def speech(work):
    return _speech_model(work / "speech.onnx")


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
