"""Classifiers as skl2onnx writes them (scikit-learn's ONNX exporter), built here op by op: the
probabilities as a sequence of {class: probability} maps (ai.onnx.ml ZipMap, cut and put back as a
selection is), a pipeline's StandardScaler as ai.onnx.ml's Scaler (whose output ONNX does not type),
a linear model as ai.onnx.ml's LinearClassifier (nothing ONNX Runtime computes in INT8)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def _save(path, name: str, nodes: list, weights: dict) -> None:
    """Write NODES (reading `input` [N, 64], making `label` and `probabilities`) and WEIGHTS to PATH
    as skl2onnx ends a classifier: the probabilities as a sequence of {class: probability} maps
    (ai.onnx.ml ZipMap) beside the label."""
    zipmap = helper.make_node(
        "ZipMap",
        ["probabilities"],
        ["output_probability"],
        domain="ai.onnx.ml",
        classlabels_int64s=list(range(10)),
    )
    maps = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    graph = helper.make_graph(
        [*nodes, zipmap],
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_value_info("output_probability", maps),
        ],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))


def _digits(tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits in [0, 1]: 1000 to train on returned, the next 300 written as
    calib.npz and the rest as eval.npz in TMP_PATH."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x[1000:1300])
    np.savez(tmp_path / "eval.npz", input=x[1300:])
    return x[:1000], y[:1000]


def _zipmap_classifier(path, x: np.ndarray, y: np.ndarray) -> None:
    """A StandardScaler and an MLP on scikit-learn's digits written as skl2onnx writes such a
    pipeline: the scaler as ai.onnx.ml's Scaler (whose output ONNX does not type) and a Cast to
    float, a label output (ArgMax) and the probabilities as a sequence of {class: probability} maps
    (ai.onnx.ml ZipMap)."""
    from sklearn.neural_network import MLPClassifier

    mean, std = x.mean(0), x.std(0) + 1e-3
    scaler = {"offset": mean.tolist(), "scale": (1 / std).tolist()}
    clf = MLPClassifier((64,), max_iter=400, random_state=0).fit((x - mean) / std, y)  # converged
    (w1, w2), (b1, b2) = clf.coefs_, clf.intercepts_
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    nodes = [
        helper.make_node("Scaler", ["input"], ["variable"], domain="ai.onnx.ml", **scaler),
        helper.make_node("Cast", ["variable"], ["cast_input"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["cast_input", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    _save(path, "mlp", nodes, weights)


def test_int8_of_a_classifier_whose_probabilities_are_a_sequence_of_maps(edgekit, tmp_path):
    _zipmap_classifier(tmp_path / "mlp.onnx", *_digits(tmp_path))
    r = edgekit(
        "compress", tmp_path / "mlp.onnx", "--int8", "--calib", tmp_path / "calib.npz", "--eval",
        tmp_path / "eval.npz", "-o", tmp_path / "out",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr  # was: "does not run in ONNX Runtime ... ('list' object has no
    manifest = json.loads((tmp_path / "out" / "edgekit.json").read_text())  # attribute 'shape')"
    # the Cast after the Scaler (ORT's optimizer drops it) typed every tensor after it: without it
    # ORT's quantizer skipped them all ("quantized none of the model's compute ops (MatMul x2)")
    assert manifest["passes"][-1]["summary"]["quantized_ops"] == {"MatMul": 2}
    judged = manifest["verification"]["int8"]["fidelity"]["output_0"]
    assert judged["name"] == "probabilities" and judged["kind"] == "classes"  # by its kind, not "other"
    assert judged["top1_agreement"] >= 0.95, judged
    label = manifest["verification"]["int8"]["fidelity"]["output_1"]
    assert label["name"] == "label" and label["kind"] == "labels" and label["equal"] >= 0.95
    assert manifest["verification"]["selection"]["ops"] == ["ZipMap"]
    fp32, int8 = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        for p in (tmp_path / "mlp.onnx", tmp_path / "out" / "model.onnx")
    )
    assert [o.name for o in int8.get_outputs()] == ["label", "output_probability"]
    assert "QuantizeLinear" in {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.onnx")).graph.node}
    x = np.load(tmp_path / "eval.npz")["input"][:100]
    (label, maps), (label8, maps8) = (s.run(None, {"input": x}) for s in (fp32, int8))
    assert isinstance(maps8[0], dict) and sorted(maps8[0]) == list(range(10))  # still maps
    assert np.mean(label == label8) >= 0.95
    # the largest of 1000 probabilities' changes: 0.104 with an AVX2-only CPU's pair-bounded weights
    assert max(abs(a[k] - b[k]) for a, b in zip(maps, maps8, strict=True) for k in a) < 0.15


def _linear_classifier(path, x: np.ndarray, y: np.ndarray, pca: int | None) -> None:
    """A logistic regression on the digits as skl2onnx writes it (ai.onnx.ml LinearClassifier,
    a Normalizer, a ZipMap), after a PCA to PCA components (Sub, MatMul) where given."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    nodes, weights, features = [], {}, "input"
    if pca:
        reduce = PCA(pca, random_state=0).fit(x)
        weights = {"mean": reduce.mean_, "components": reduce.components_.T}
        nodes += [
            helper.make_node("Sub", ["input", "mean"], ["centred"]),
            helper.make_node("MatMul", ["centred", "components"], ["variable"]),
        ]
        x, features = reduce.transform(x), "variable"
    clf = LogisticRegression(max_iter=3000).fit(x, y)
    nodes += [
        helper.make_node(
            "LinearClassifier",
            [features],
            ["label", "scores"],
            domain="ai.onnx.ml",
            coefficients=clf.coef_.ravel().tolist(),
            intercepts=clf.intercept_.tolist(),
            classlabels_ints=list(range(10)),
            multi_class=1,
            post_transform="SOFTMAX",
        ),
        helper.make_node("Normalizer", ["scores"], ["probabilities"], domain="ai.onnx.ml", norm="L1"),
    ]
    _save(path, "linear", nodes, weights)


def test_a_linear_classifier_alone_has_nothing_to_quantize(edgekit, tmp_path):
    """Was: a calibration failure from ONNX Runtime ("Invalid tensor data type 0")."""
    _linear_classifier(tmp_path / "logreg.onnx", *_digits(tmp_path), pca=None)
    calib = tmp_path / "calib.npz"
    r = edgekit("compress", tmp_path / "logreg.onnx", "--int8", "--calib", calib, "-o", tmp_path / "out")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "found nothing to quantize: the model has no Conv, ConvTranspose, MatMul or Gemm" in lines[0]
    assert "LinearClassifier x1" in lines[0] and not (tmp_path / "out").exists()


def test_a_pca_before_a_linear_classifier_is_quantized(edgekit, tmp_path):
    """The scores ONNX cannot type (LinearClassifier's) are what the cut ZipMap reads: typed as ONNX
    Runtime types them, the PCA's MatMul INT8 (was: "Invalid tensor data type 0")."""
    _linear_classifier(tmp_path / "pca.onnx", *_digits(tmp_path), pca=32)
    r = edgekit(
        "compress", tmp_path / "pca.onnx", "--int8", "--calib", tmp_path / "calib.npz", "--eval",
        tmp_path / "eval.npz", "-o", tmp_path / "out",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "edgekit.json").read_text())
    assert manifest["passes"][-1]["summary"]["quantized_ops"] == {"MatMul": 1}
    fid = manifest["verification"]["int8"]["fidelity"]
    assert fid["output_0"]["name"] == "probabilities" and fid["output_0"]["top1_agreement"] >= 0.95, fid
    assert fid["output_1"]["name"] == "label" and fid["output_1"]["equal"] >= 0.95, fid
