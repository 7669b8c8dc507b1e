"""Verification by output kind: each output of a model is judged by the metric that fits it
(benchmarks.metrics.output_kind): class scores by top-1 agreement, embeddings by cosine, sequences
of class scores (CTC, tokens) by sequence agreement, dense maps by mask IoU, and every output by
SQNR and max abs diff. Synthetic arrays for each kind, and one INT8 compress of a real two-output
torch model."""

import numpy as np
import pytest

from edgekit.benchmarks.metrics import compare_outputs, fidelity, kind_line, output_kind
from edgekit.benchmarks.report import quality_line
from edgekit.errors import EdgekitError

RNG = np.random.default_rng(0)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def test_a_normalised_embedding_is_judged_by_cosine_not_top1():
    ref = _unit(RNG.normal(size=(16, 384)))
    out = ref + RNG.normal(scale=0.002, size=ref.shape)
    fid = compare_outputs(ref, out)
    assert fid["kind"] == "embedding" and "top1_agreement" not in fid
    assert 0.99 < fid["cosine_min"] <= fid["cosine_mean"] < 1.0
    assert kind_line(fid).startswith("embedding: cosine 0.99") and "top-1" not in kind_line(fid)


def test_an_embedding_is_known_by_its_name_even_unnormalised():
    ref = RNG.normal(size=(8, 384))
    assert output_kind(ref, "sentence_embedding") == "embedding"
    assert output_kind(ref, "pooler_output") == "embedding"
    assert output_kind(ref, "logits") == "classes" and output_kind(ref) == "classes"
    assert output_kind(RNG.normal(size=(2, 7, 384)), "last_hidden_state") == "embedding"


def test_class_scores_keep_todays_keys():
    ref = RNG.normal(size=(20, 10))
    out = ref.copy()
    out[0, ref[0].argmin()] = ref[0].max() + 1  # one flipped decision
    fid = fidelity([ref], [out])["output_0"]
    assert fid["kind"] == "classes" and fid["top1_agreement"] == pytest.approx(0.95)
    assert {"sqnr_db", "cosine", "max_abs_diff"} <= fid.keys()


def test_a_ctc_sequence_with_one_flipped_position():
    ref = RNG.normal(size=(4, 25, 30))
    out = ref.copy()
    out[1, 7, ref[1, 7].argmin()] = ref[1, 7].max() + 1
    fid = compare_outputs(ref, out)
    assert fid["kind"] == "sequence" and "top1_agreement" not in fid
    assert fid["sequence_agreement"] == pytest.approx(0.75)
    assert fid["position_agreement"] == pytest.approx(1 - 1 / 100)
    assert "sequences equal 75.00 %" in kind_line(fid)


def test_a_ctc_sequence_is_also_judged_by_its_greedy_decoding():
    """A character's last position moved into the blank after it: the positions differ, the text
    read from them does not; a changed character changes it."""
    blank = 5  # not class 0: the blank is found as the class predicted most often
    ids = np.full((3, 12), blank)
    ids[:, 2:4] = 1  # "1" held two positions
    ids[:, 7] = 2
    ref = np.eye(6)[ids] + RNG.normal(scale=0.01, size=(3, 12, 6))
    moved, changed = ids.copy(), ids.copy()
    moved[0, 3] = blank  # row 0: the same text
    changed[1, 7] = 3  # row 1: another character
    out = np.eye(6)[np.where(np.arange(3)[:, None] == 0, moved, changed)]
    fid = compare_outputs(ref, out)
    assert fid["sequence_agreement"] == pytest.approx(1 / 3)
    assert fid["decoded_agreement"] == pytest.approx(2 / 3)
    assert "CTC-decoded equal 66.67 %" in kind_line(fid)


def test_an_attention_decoders_padded_tokens_are_judged_before_the_padding_not_by_ctc():
    """A decoder's tokens to its end token, then padding to the fixed length (SLANet: 501 steps,
    some 30 of them a table): the padding both sides share is no agreement, and CTC's greedy
    decoding, which merges a run of equal tokens (a row of cells), does not apply."""
    pad, cell, end = 0, 3, 5
    ids = np.full((4, 40), pad)
    ids[:, :9] = [1, 2, cell, cell, cell, 4, 2, cell, end]
    out_ids = ids.copy()
    out_ids[1, 3:5] = [end, pad]  # row 1 ends early: 2 of 9 tokens differ, then the padding agrees
    ref = np.eye(6)[ids] + RNG.normal(scale=0.01, size=(4, 40, 6))
    fid = compare_outputs(ref, np.eye(6)[out_ids])
    assert fid["kind"] == "sequence" and fid["sequence_agreement"] == pytest.approx(3 / 4)
    assert fid["position_agreement"] == pytest.approx(1 - 2 / 36)  # not 1 - 2 / 160, all positions
    assert "decoded_agreement" not in fid
    assert "positions before the padding 94.44 %" in kind_line(fid) and "CTC" not in kind_line(fid)


def test_a_dense_detectors_sigmoid_scores_are_judged_by_sqnr_not_by_argmax():
    """[N, anchors, classes] of independent sigmoid scores (PicoDet, RetinaNet): most anchors hold
    no object and their argmax is noise; a softmax sequence or logits stay a sequence."""
    logits = RNG.normal(-6, 2, size=(2, 500, 10))
    scores = 1 / (1 + np.exp(-logits))
    assert output_kind(scores) == "other"
    assert output_kind(logits) == "sequence"
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert output_kind(softmax) == "sequence"
    assert output_kind(scores[:, 0]) == "classes"  # [N, C]: a multi-label classifier's top-1 holds
    # what a user thresholding them keeps: the entries above 0.5, as sets
    out = scores.copy()
    above = np.argwhere(scores > 0.5)
    out[tuple(above[0])] = 0.4  # one decision lost of len(above)
    fid = compare_outputs(scores, out)
    assert fid["decisions_iou"] == pytest.approx((len(above) - 1) / len(above))
    assert kind_line(fid).startswith(f"other: decisions above 0.5 IoU {fid['decisions_iou']:.3f}")


def test_a_dense_map_by_mask_iou():
    ref = np.zeros((2, 1, 8, 8))
    ref[:, :, 2:6, 2:6] = 1.0  # 16 pixels above half the maximum
    out = ref.copy()
    out[:, :, 2:6, 6] = 0.9  # 4 more: IoU 16/20
    fid = compare_outputs(ref, out)
    assert fid["kind"] == "dense" and fid["mask_iou"] == pytest.approx(0.8)
    assert {"sqnr_db", "max_abs_diff"} <= fid.keys()


def test_each_output_of_a_multi_output_model_is_judged_by_its_own_kind():
    scores, emb, seq = RNG.normal(size=(6, 5)), RNG.normal(size=(6, 64)), RNG.normal(size=(6, 9, 12))
    ref = [scores, emb, seq]
    fid = fidelity(ref, [a + 1e-4 for a in ref], ["logits", "embedding", "ctc"], {"ctc": "other"})
    assert [fid[f"output_{i}"]["kind"] for i in range(3)] == ["classes", "embedding", "other"]
    assert fid["output_1"]["name"] == "embedding" and "cosine_mean" in fid["output_1"]
    q = {"samples": 6, "data": "eval", "fidelity": fid}
    line = quality_line(q)
    assert "logits classes: top-1 agreement 100.00 %" in line
    assert "embedding embedding: cosine 1.000" in line and "ctc other: max abs diff" in line


TWO_HEADS = '''
import torch


class TwoHeads(torch.nn.Module):
    """Class scores and a dense map from one trunk."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.trunk = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU())
        self.classes = torch.nn.Linear(8, 10)
        self.map = torch.nn.Conv2d(8, 1, 1)

    def forward(self, x):
        f = self.trunk(x)
        return self.classes(f.mean((2, 3))), torch.sigmoid(self.map(f))


def net():
    return TwoHeads()
'''


def test_compress_int8_verifies_each_output_by_its_kind(edgekit, work):
    import importlib.util

    import torch

    from edgekit.artifact import read_manifest

    (work / "twoheads.py").write_text(TWO_HEADS)
    spec = importlib.util.spec_from_file_location("twoheads", work / "twoheads.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.jit.save(torch.jit.script(mod.net().eval()), str(work / "model.ts.pt"))
    out = work / "int8"
    r = edgekit(
        "compress",
        work / "model.ts.pt",
        "--input-shape",
        "1,1,16,16",
        "--int8",
        "--calib",
        "random",
        "--calib-size",
        "32",
        "-o",
        out,
    )
    assert r.returncode == 0, r.stderr
    fid = read_manifest(out).verification["int8"]["fidelity"]
    assert fid["output_0"]["kind"] == "classes" and "top1_agreement" in fid["output_0"]
    # the sigmoid map of random weights on random inputs fills its range: judged as a picture
    assert fid["output_1"]["kind"] == "image" and 0 <= fid["output_1"]["ssim_mean"] <= 1
    assert "classes: top-1 agreement" in r.stdout and "image: SSIM" in r.stdout


def test_a_confident_softmax_stays_class_scores():
    logits = RNG.normal(size=(8, 10))
    logits[np.arange(8), RNG.integers(0, 10, 8)] += 30  # nearly one-hot: of nearly unit L2 norm
    p = np.exp(logits - logits.max(1, keepdims=True))
    assert output_kind(p / p.sum(1, keepdims=True)) == "classes"


@pytest.mark.parametrize(
    "kind, said",
    [
        ("output=vector", "--output-kind 'output=vector' must be NAME=KIND"),
        ("logits=classes", "names 'logits', which is no output of the model (its outputs: output)"),
    ],
    ids=["unknown-kind", "no-such-output"],
)
def test_a_bad_output_kind_is_refused(edgekit, tiny, work, kind, said):
    argv = ["--input-shape", "1,1,16,16", "--int8", "--calib", "random", "--calib-size", "16"]
    r = edgekit("compress", tiny / "model.ts.pt", *argv, "--output-kind", kind, "-o", work / "int8")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("edgekit: error: "), r.stderr
    assert said in lines[0]
    assert "Traceback" not in r.stderr and not (work / "int8").exists() and list(work.iterdir()) == []


def test_an_output_sized_by_the_data_is_one_sentence_not_a_broadcast_error():
    """A detector's selected boxes: 5 rows in fp32, 6 in the compressed model."""
    ref, out = [np.zeros((5, 4), np.float32)], [np.zeros((6, 4), np.float32)]
    with pytest.raises(EdgekitError, match=r"'detections' is \[6, 4\] here and \[5, 4\] in the ref"):
        fidelity(ref, out, ["detections"])


def test_size_one_axes_beside_the_batch_are_read_through():
    """A TensorFlow CNN's pooled features [N, 1, 1, C] (openWakeWord's speech embedding) and a torch
    classifier's [N, C, 1, 1] are one vector per sample, judged as [N, C], not as a dense map."""
    logits = RNG.normal(size=(50, 12))
    out = logits + RNG.normal(scale=0.3, size=logits.shape)
    flat = compare_outputs(logits, out)
    for shape in ((50, 1, 1, 12), (50, 12, 1, 1)):
        fid = compare_outputs(logits.reshape(shape), out.reshape(shape))
        assert fid["kind"] == "classes" and fid["top1_agreement"] == flat["top1_agreement"]
    unit = logits / np.linalg.norm(logits, axis=1, keepdims=True)
    assert output_kind(unit.reshape(50, 12, 1, 1)) == "embedding"
    assert output_kind(np.zeros((50, 1, 8, 8))) == "dense"


def _smooth_maps(n: int, channels: int, size: int = 32) -> np.ndarray:
    """Maps that vary smoothly in space: noise summed along both spatial axes, [n, channels, H, W]."""
    return RNG.normal(size=(n, channels, size, size)).cumsum(2).cumsum(3) / size


def test_a_map_of_one_value_per_pixel_is_no_sequence_of_class_scores():
    """A depth or heat map [N, H, W] varies smoothly along both axes; class scores [N, T, C] do not
    along their classes (PP-OCRv4's 6625 characters: neighbour correlation 0.0001)."""
    depth = _smooth_maps(4, 1)[:, 0] + 10
    assert output_kind(depth) == "image"
    assert output_kind(RNG.normal(size=(4, 40, 97))) == "sequence"


def _picture(n: int = 3, size: int = 32) -> np.ndarray:
    """RGB pictures in [0, 1]: smooth maps, channels rising together, [n, 3, size, size]."""
    grey = _smooth_maps(n, 1, size)
    rgb = grey.repeat(3, 1) + 0.05 * _smooth_maps(n, 3, size)
    lo, hi = rgb.min(), rgb.max()
    return (rgb - lo) / (hi - lo)


def _ssim_by_windows(a: np.ndarray, b: np.ndarray, span: float, w: int = 7) -> float:
    """SSIM of two [planes, H, W] pictures computed window by window (Wang et al. 2004, sample
    variances), the mean over every full window of every plane."""
    c1, c2, values = (0.01 * span) ** 2, (0.03 * span) ** 2, []
    for p in range(a.shape[0]):
        for y in range(a.shape[1] - w + 1):
            for x in range(a.shape[2] - w + 1):
                u, v = a[p, y : y + w, x : x + w].ravel(), b[p, y : y + w, x : x + w].ravel()
                cov = np.cov(u, v)  # ddof 1
                values.append(
                    (2 * u.mean() * v.mean() + c1)
                    * (2 * cov[0, 1] + c2)
                    / ((u.mean() ** 2 + v.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2))
                )
    return float(np.mean(values))


def test_a_picture_is_judged_by_ssim_and_psnr():
    """An upscaler's or a denoiser's output is a picture: judged by structural similarity and PSNR
    over fp32's value range, not by a mask at half its maximum (which noise of 3 % of the range
    barely moves)."""
    ref = _picture(size=24)
    noise = RNG.normal(scale=0.03, size=ref.shape)
    out = ref + noise
    fid = compare_outputs(ref, out)
    assert fid["kind"] == "image"
    lo, hi = np.percentile(ref, [0.1, 99.9])
    assert fid["psnr_db"] == pytest.approx(10 * np.log10((hi - lo) ** 2 / np.mean(noise**2)))
    per_sample = [_ssim_by_windows(ref[i], out[i], hi - lo) for i in range(len(ref))]
    assert fid["ssim_mean"] == pytest.approx(np.mean(per_sample))
    assert fid["ssim_min"] == pytest.approx(min(per_sample))
    assert fid["ssim_mean"] < 0.95  # the noise is seen ...
    assert compare_outputs(ref, ref + noise / 10)["ssim_mean"] > fid["ssim_mean"]  # ... and less of it
    same = compare_outputs(ref, ref.copy())
    assert same["ssim_mean"] == pytest.approx(1) and same["psnr_db"] == float("inf")
    nhwc = compare_outputs(ref.transpose(0, 2, 3, 1), out.transpose(0, 2, 3, 1))
    assert nhwc["kind"] == "image" and nhwc["ssim_mean"] == pytest.approx(fid["ssim_mean"])
    line = kind_line(fid)
    assert line.startswith(f"image: SSIM {fid['ssim_mean']:.3f} (min ") and line.endswith(" dB")


def test_a_score_map_mostly_background_stays_a_dense_map():
    """Text regions, a face, a keypoint: a map at its low end almost everywhere is judged by the mask
    of its high values; the same map lifted to fill its range is a picture."""
    yy, xx = np.mgrid[:32, :32]
    blobs = np.stack(
        [np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0) for cy, cx in RNG.integers(4, 28, (4, 2))]
    )
    heat = blobs[:, None]  # [4, 1, 32, 32]: background 0, one peak each
    assert output_kind(heat) == "dense" and output_kind(heat[:, 0]) == "dense"
    assert output_kind(1 - heat) == "image"  # background at the top of the range: the values fill it


def test_per_pixel_class_scores_are_judged_by_the_pixels_whose_class_holds():
    logits = _smooth_maps(3, 21) + RNG.normal(
        scale=0.1, size=(3, 21, 32, 32)
    )  # classes unordered, pixels smooth
    logits = logits[:, RNG.permutation(21)]
    out = logits + RNG.normal(scale=0.2, size=logits.shape)
    fid = compare_outputs(logits, out)
    assert fid["kind"] == "segmentation"
    assert fid["pixel_agreement"] == pytest.approx(np.mean(logits.argmax(1) == out.argmax(1)))
    assert kind_line(fid) == f"segmentation: pixel agreement {100 * fid['pixel_agreement']:.2f} %"
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    assert output_kind(probabilities) == "segmentation"
    nhwc = compare_outputs(logits.transpose(0, 2, 3, 1), out.transpose(0, 2, 3, 1))
    assert nhwc["kind"] == "segmentation" and nhwc["pixel_agreement"] == fid["pixel_agreement"]
    image = _smooth_maps(3, 1).repeat(3, 1) + RNG.normal(scale=0.05, size=(3, 3, 32, 32))  # RGB: correlated
    assert output_kind(image) == "image"


def test_a_decoders_attention_cache_is_a_state_not_a_map():
    """optimum's decoder exports hand back present.N.key / .value [N, heads, T, D] for the next
    token: judged by SQNR like a recurrent state, not as a dense map by mask IoU."""
    cache = RNG.normal(size=(4, 4, 9, 32))
    for name in ("present.0.key", "present_key_values.1", "past_key_values.0.value"):
        assert output_kind(cache, name) == "other"
    assert output_kind(RNG.normal(size=(4, 1, 1000)), "logits") == "classes"


def test_regressed_coordinates_are_no_class_scores():
    """MTCNN hands back 4 box offsets and 10 landmark coordinates per face beside its face
    probability: the argmax of coordinates means nothing (its boxes read 92 % "agreement" at 6 dB)."""
    for name, shape in (("boxes", (64, 4)), ("landmarks", (64, 10)), ("bbox_deltas", (8, 4, 30, 40))):
        assert output_kind(RNG.normal(size=shape), name) == "other", name
    assert output_kind(RNG.normal(size=(64, 2)), "prob") == "classes"
    assert output_kind(RNG.normal(size=(64, 80)), "box_scores") == "classes"  # a score word wins


def test_integer_outputs_are_labels_judged_equal_or_not():
    """A classifier's ArgMax or skl2onnx's label output [N], a segmenter's class map [N, H, W]: the
    share of labels INT8 keeps, not an SQNR of class numbers."""
    labels = RNG.integers(0, 10, 200)
    out = labels.copy()
    out[:10] = (out[:10] + 1) % 10
    fid = compare_outputs(labels, out)
    assert fid["kind"] == "labels" and fid["equal"] == pytest.approx(0.95)
    assert kind_line(fid) == "labels: equal 95.00 %"
    class_map = RNG.integers(0, 3, (4, 16, 16)).astype(np.int32)
    assert output_kind(class_map) == "labels"
    assert compare_outputs(class_map, class_map)["equal"] == 1.0
