"""What a search candidate is built and scored from, without Ray: the calibration samples as they
travel to a build (a state batched on its second axis, a constant sample rate), an fp32 candidate
of a model with open axes built on them, and the evaluation shards fed on each input's batch axis.
Silero VAD's search had failed at its fp32 build ("random inputs need a size for every axis")."""

from __future__ import annotations

import numpy as np

from edgekit import candidates, search
from edgekit.artifact import LoadOptions
from edgekit.data import Preprocess, load_samples
from edgekit.model import load_model
from tests.models import SPEECH_HIDDEN, SPEECH_LENGTH, speech_model


def _samples(tmp_path, n=24):
    model = speech_model(tmp_path / "speech.onnx")
    rng = np.random.default_rng(1)
    audio = rng.standard_normal((n, SPEECH_LENGTH)).astype(np.float32)
    state = rng.standard_normal((2, n, SPEECH_HIDDEN)).astype(np.float32)
    np.savez(tmp_path / "data.npz", audio=audio, state=state, sr=np.int64(16000), **{"state.batch_axis": 1})
    spec = load_model(model, LoadOptions()).input_spec
    samples = load_samples(tmp_path / "data.npz", spec, None, Preprocess(), 0, "calib")
    return model, spec, samples


def test_calibration_samples_travel_to_a_build_as_they_were(tmp_path):
    """The state samples first with its axis recorded (it had been read as batched on axis 1
    again: "input has 125 rows but state has 2"), the sample rate a constant."""
    _, spec, samples = _samples(tmp_path)
    (tmp_path / "sent.npz").write_bytes(candidates.npz_bytes(samples))
    back = load_samples(tmp_path / "sent.npz", spec, None, Preprocess(), 0, "calib")
    assert back.inputs.axes == samples.inputs.axes == {"audio": 0, "state": 1, "sr": None}
    for name in ("audio", "state", "sr"):
        np.testing.assert_array_equal(back.inputs[name], samples.inputs[name])
    assert set(back.description["constants"]) == {"sr"}


def test_an_fp32_candidate_of_a_model_with_open_axes_is_built_on_the_calibration_data(tmp_path):
    """Its audio declared [N, samples], as Silero VAD's is ['batch', 'sequence']."""
    import onnx

    _, _, samples = _samples(tmp_path)
    model = onnx.load(str(tmp_path / "speech.onnx"))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "samples"
    onnx.save(model, str(tmp_path / "open.onnx"))
    model = tmp_path / "open.onnx"
    source = candidates.Source(
        model.name, model.read_bytes(), LoadOptions(), candidates.npz_bytes(samples), 16
    )
    built = candidates.build(source, [])
    assert "error" not in built, built.get("error")


def test_evaluation_shards_feed_each_input_on_its_batch_axis(tmp_path):
    """Shards of 10 samples score like the whole set: the state on axis 1, sr as its one value."""
    import onnxruntime as ort

    model, _, samples = _samples(tmp_path)
    shards = search.eval_shards(samples, 10)
    assert [len(s["audio"]) for s in shards] == [10, 10, 4]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def run(feeds):
        return session.run(None, feeds)

    whole = samples.outputs(run, None, "whole")[0]
    parts = [type(samples)(s, None).outputs(run, None, "shard")[0] for s in shards]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=1e-5, atol=1e-5)


def test_a_mixed_candidate_measures_its_drop_on_the_evaluation_data(tmp_path):
    """As `edgekit run` builds a mixed variant (it had failed: "--max-accuracy-drop needs
    evaluation data")."""
    from edgekit.passes import Step, config
    from tests.models import margin_classifier, smooth_images

    margin_classifier(tmp_path / "classifier.onnx")
    spec = load_model(tmp_path / "classifier.onnx", LoadOptions()).input_spec
    np.savez(tmp_path / "calib.npz", x=smooth_images(40, seed=1))
    np.savez(tmp_path / "eval.npz", x=smooth_images(40, seed=2))
    calib, evals = (
        load_samples(tmp_path / f, spec, None, Preprocess(), 0, "calib") for f in ("calib.npz", "eval.npz")
    )
    model = tmp_path / "classifier.onnx"
    source = candidates.Source(
        model.name,
        model.read_bytes(),
        LoadOptions(),
        candidates.npz_bytes(calib),
        32,
        evals=candidates.npz_bytes(evals),
    )
    chain = [Step("int8", config("int8")), Step("mixed", config("mixed", max_accuracy_drop=5.0, rounds=3))]
    built = candidates.build(source, chain)
    assert "error" not in built, built.get("error")


def test_a_runtime_that_cannot_run_a_candidate_gives_its_error(tmp_path):
    """Scored in a runtime that cannot run it: its sentence, for a failed candidate (it had been
    an exception, retried three times, a traceback and "failed past their retries (a node lost?)")."""
    model, _, samples = _samples(tmp_path)
    source = candidates.Source(
        model.name, model.read_bytes(), LoadOptions(), candidates.npz_bytes(samples), 16
    )
    artifact = candidates.build(source, [])["artifact"]
    scored = candidates.outputs(artifact, "tensorrt", search.eval_shards(samples, 10)[0], 1)
    assert list(scored) == ["error"] and "TensorRT" in scored["error"]
    assert len(candidates.outputs(artifact, "ort", search.eval_shards(samples, 10)[0], 1)["outputs"][0]) == 10


def test_apply_writes_the_candidate_under_a_commented_variants_line(tmp_path):
    """`edgekit init` writes `variants:` with a comment after it; --apply looked for the bare line
    and refused every config it had written ("has no block `variants:` line")."""
    import json

    from edgekit.config import load

    for name in ("model.onnx", "calib.npz"):
        (tmp_path / name).write_bytes(b"")
    config = tmp_path / "edgekit.yaml"
    config.write_text(
        "model:\n  path: model.onnx\ndata:\n  calibration: calib.npz\n"
        "variants:                          # name: the passes applied to the model, in order\n"
        "  fp32: []                         # the verified fp32 ONNX export: the baseline\n"
        "targets:\n  - name: cpu\n    variants: [fp32]\n"
    )
    out = tmp_path / "edgekit-search"
    (out / search.ARTIFACTS / "s1c59a0").mkdir(parents=True)
    record = {"key": "k", "name": "s1c59a0", "status": "ok", "chain": [["int8", {"calibration": "minmax"}]]}
    (out / search.RESULTS).write_text(json.dumps(record) + "\n")
    search.apply(config, out, "s1c59a0")
    cfg = load(config)
    assert [s.name for s in cfg.chain("s1c59a0")] == ["int8"] and "fp32" in cfg.variants
    assert "# the verified fp32 ONNX export: the baseline" in config.read_text()  # comments kept


def test_a_candidate_is_the_variant_edgekit_run_builds(tmp_path, edgekit):
    """The search's INT8 candidate and `edgekit run`'s INT8 variant (compress with the config's
    calibration and evaluation data) are the same file: the search had calibrated on another draw
    of the samples (a fifth more, some held out), so --apply's variant was not what it measured."""
    from edgekit.config import load
    from edgekit.passes import Step, config
    from tests.models import margin_classifier, smooth_images

    margin_classifier(tmp_path / "classifier.onnx")
    np.savez(tmp_path / "calib.npz", x=smooth_images(200, seed=1))
    np.savez(tmp_path / "eval.npz", x=smooth_images(40, seed=2))
    (tmp_path / "edgekit.yaml").write_text(
        "model:\n  path: classifier.onnx\ndata:\n  calibration: calib.npz\n  calib_size: 64\n"
        "  evaluation: eval.npz\nvariants:\n  fp32: []\ntargets:\n  - name: cpu\n    variants: [fp32]\n"
    )
    source, _, _ = search._data(load(tmp_path / "edgekit.yaml"))
    built = candidates.build(source, [Step("int8", config("int8"))])
    candidates.unpack(built["artifact"], tmp_path / "candidate")
    r = edgekit(
        "compress", tmp_path / "classifier.onnx", "--int8", "--calib", tmp_path / "calib.npz",
        "--calib-size", "64", "--eval", tmp_path / "eval.npz", "-o", tmp_path / "variant",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    candidate, variant = (tmp_path / d / "model.onnx" for d in ("candidate", "variant"))
    assert candidate.read_bytes() == variant.read_bytes()
