"""Calibration / evaluation data sources (`load_samples`) on real files: PNGs, .npz, modules."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from PIL import Image

from edgekit.artifact import InputSpec, TensorSpec
from edgekit.data import IMAGENET_MEAN, IMAGENET_STD, Preprocess, Samples, load_samples, split_holdout
from edgekit.errors import EdgekitError

# class name -> the uniform RGB colour of its images: labels can be checked from pixel values
COLOURS = {"cat": (200, 30, 90), "dog": (20, 160, 240)}
PER_CLASS = 4


def image_spec(size: int = 16, channels: int = 3) -> InputSpec:
    return InputSpec(inputs=[TensorSpec(name="pixels", shape=["batch", channels, size, size])])


@pytest.fixture
def image_folder(tmp_path):
    """ImageFolder layout: cat/ and dog/, 4 uniform-colour PNGs each, of various sizes."""
    root = tmp_path / "images"
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(PER_CLASS):
            Image.new("RGB", (40 + 7 * i, 30 + 3 * i), colour).save(root / name / f"{i}.png")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def expected_pixel(colour, mean=IMAGENET_MEAN, std=IMAGENET_STD, bgr=False) -> np.ndarray:
    c = np.array(colour[::-1] if bgr else colour, np.float32) / 255.0
    return (c - np.array(mean, np.float32)) / np.array(std, np.float32)


def test_image_folder_labels_shape_and_normalisation(image_folder):
    s = load_samples(str(image_folder), image_spec(), None, Preprocess())
    x = s.inputs["pixels"]
    assert x.shape == (2 * PER_CLASS, 3, 16, 16) and x.dtype == np.float32 and x.flags.c_contiguous
    assert s.labels is not None and s.labels.dtype == np.int64
    assert sorted(s.labels.tolist()) == [0] * PER_CLASS + [1] * PER_CLASS
    assert s.description["classes"] == ["cat", "dog"]
    for img, label in zip(x, s.labels, strict=True):
        want = expected_pixel(COLOURS[["cat", "dog"][label]])
        np.testing.assert_allclose(img, np.broadcast_to(want[:, None, None], img.shape), atol=1e-5)


def test_image_folder_records_preprocessing(image_folder):
    pre = Preprocess(resize=24, crop=12, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), channel_order="bgr")
    s = load_samples(str(image_folder), image_spec(12), None, pre)
    d = s.description
    assert d["kind"] == "image_folder" and d["count"] == 2 * PER_CLASS
    assert d["source"] == str(image_folder.absolute())
    assert d["preprocess"]["resize"] == 24 and d["preprocess"]["crop"] == 12
    assert list(d["preprocess"]["mean"]) == [0.5] * 3 and list(d["preprocess"]["std"]) == [0.25] * 3
    assert d["preprocess"]["channel_order"] == "bgr"
    assert d["effective"] == {"resize": 24, "crop": [12, 12], "layout": "nchw"}
    x = s.inputs["pixels"]
    assert x.shape == (2 * PER_CLASS, 3, 12, 12)
    for img, label in zip(x, s.labels, strict=True):
        want = expected_pixel(COLOURS[["cat", "dog"][label]], (0.5,) * 3, (0.25,) * 3, bgr=True)
        np.testing.assert_allclose(img[:, 0, 0], want, atol=1e-5)


def test_image_folder_default_resize_is_crop_over_0875(image_folder):
    s = load_samples(str(image_folder), image_spec(28), None, Preprocess())
    assert s.description["effective"] == {"resize": 32, "crop": [28, 28], "layout": "nchw"}


def test_image_center_crop_keeps_the_middle(tmp_path):
    """A left half black, right half white image, cropped square from its centre."""
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, 30:] = 255
    (tmp_path / "one").mkdir()
    Image.fromarray(arr).save(tmp_path / "one" / "a.png")
    pre = Preprocess(resize=20, crop=20, mean=(0, 0, 0), std=(1, 1, 1))
    x = load_samples(str(tmp_path), image_spec(20), None, pre).inputs["pixels"][0]
    # the centre crop covers columns 20..40 of the original: black on the left, white on the right
    assert x[:, :, :8].max() < 0.05 and x[:, :, 12:].min() > 0.95


def test_channels_last_image_input_is_read_channels_last(image_folder):
    """A tf2onnx / TFLite export's [N, H, W, 3] input: auto layout reads the images channels-last,
    the same pixels as channels-first, transposed."""
    nhwc = InputSpec(inputs=[TensorSpec(name="pixels", shape=["batch", 16, 16, 3])])
    s = load_samples(str(image_folder), nhwc, None, Preprocess())
    assert s.inputs["pixels"].shape == (2 * PER_CLASS, 16, 16, 3)
    assert s.description["effective"]["layout"] == "nhwc"
    nchw = load_samples(str(image_folder), image_spec(), None, Preprocess()).inputs["pixels"]
    np.testing.assert_array_equal(s.inputs["pixels"], nchw.transpose(0, 2, 3, 1))
    symbolic = InputSpec(inputs=[TensorSpec(name="pixels", shape=["batch", "h", "w", 3])])
    assert load_samples(str(image_folder), symbolic, None, Preprocess(crop=16)).inputs["pixels"].shape[3] == 3


def test_uint8_image_input_gets_raw_pixels(image_folder):
    """A model that normalises inside takes 0-255 pixels of its own dtype, not ImageNet floats."""
    spec = InputSpec(inputs=[TensorSpec(name="pixels", shape=["batch", 16, 16, 3], dtype="uint8")])
    s = load_samples(str(image_folder), spec, None, Preprocess())
    x = s.inputs["pixels"]
    assert x.dtype == np.uint8 and x.shape == (2 * PER_CLASS, 16, 16, 3)
    for img, label in zip(x, s.labels, strict=True):
        assert (img == COLOURS[["cat", "dog"][label]]).all()
    assert "not normalised" in s.description["effective"]["pixels"]


def test_symbolic_image_size_needs_a_crop(image_folder):
    """A detector's [N, 3, H, W] input: images are read at the --crop size, or refused in one
    sentence that says so (not a TypeError from dividing a symbol)."""
    spec = InputSpec(inputs=[TensorSpec(name="pixels", shape=["batch", 3, "H", "W"])])
    with pytest.raises(EdgekitError, match=r"has no fixed image size; give the size to read images at"):
        load_samples(str(image_folder), spec, None, Preprocess())
    x = load_samples(str(image_folder), spec, None, Preprocess(crop=12)).inputs["pixels"]
    assert x.shape[1:] == (3, 12, 12)


def test_layout_that_gives_no_image_channels_is_one_sentence(image_folder):
    nhwc = InputSpec(inputs=[TensorSpec(name="pixels", shape=["batch", 16, 16, 3])])
    with pytest.raises(EdgekitError, match=r"read as nchw has 16; pass --layout nhwc, or a \.npz"):
        load_samples(str(image_folder), nhwc, None, Preprocess(layout="nchw"))


def test_image_folder_grayscale_model(image_folder):
    s = load_samples(str(image_folder), image_spec(16, channels=1), None, Preprocess())
    x = s.inputs["pixels"]
    assert x.shape == (2 * PER_CLASS, 1, 16, 16)
    for img, label in zip(x, s.labels, strict=True):
        luma = Image.new("RGB", (1, 1), COLOURS[["cat", "dog"][label]]).convert("L").getpixel((0, 0))
        want = (luma / 255 - np.mean(IMAGENET_MEAN)) / np.mean(IMAGENET_STD)  # 3-channel mean/std averaged
        np.testing.assert_allclose(img, want, atol=1e-5)


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(3):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(tmp_path / f"{i}.png")
    s = load_samples(str(tmp_path), image_spec(), None, Preprocess())
    assert len(s) == 3 and s.labels is None


def test_image_folder_limit_is_a_seeded_random_choice(image_folder):
    def pick(seed):
        s = load_samples(str(image_folder), image_spec(), 3, Preprocess(), seed=seed)
        assert len(s) == 3 and s.description["count"] == 3
        return s

    a, b = pick(0), pick(0)
    np.testing.assert_array_equal(a.inputs["pixels"], b.inputs["pixels"])
    np.testing.assert_array_equal(a.labels, b.labels)
    # over a few seeds, the choice differs (8 images choose 3: 336 ordered picks)
    picks = {tuple(pick(seed).inputs["pixels"][:, 0, 0, 0].round(4)) for seed in range(6)}
    assert len(picks) > 1


# .npz


def test_npz_with_labels(tmp_path):
    x = np.arange(10, dtype=np.float64)[:, None, None, None] * np.ones((10, 3, 4, 4))
    y = np.arange(10) % 3
    np.savez(tmp_path / "d.npz", x=x, y=y)
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", 3, 4, 4])])
    s = load_samples(str(tmp_path / "d.npz"), spec, None, Preprocess())
    assert s.inputs["x"].dtype == np.float32, "cast to the model's input dtype"
    np.testing.assert_array_equal(s.inputs["x"], x.astype(np.float32))
    assert s.labels.dtype == np.int64
    np.testing.assert_array_equal(s.labels, y)
    assert s.description == {"source": str((tmp_path / "d.npz").absolute()), "kind": "npz", "count": 10}


def test_npz_limit_keeps_rows_and_labels_together(tmp_path):
    x = np.arange(50, dtype=np.float32)[:, None]
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(50))
    spec = InputSpec(inputs=[TensorSpec(name="v", shape=["batch", 1])])
    a = load_samples(str(tmp_path / "d.npz"), spec, 8, Preprocess(), seed=1)
    b = load_samples(str(tmp_path / "d.npz"), spec, 8, Preprocess(), seed=1)
    c = load_samples(str(tmp_path / "d.npz"), spec, 8, Preprocess(), seed=2)
    rows = a.inputs["v"][:, 0]
    assert len(a) == 8 and a.description["count"] == 8
    np.testing.assert_array_equal(a.labels, rows.astype(np.int64))  # each label stays with its row
    assert np.all(np.diff(rows) > 0), "file order is kept"
    np.testing.assert_array_equal(rows, b.inputs["v"][:, 0])
    assert not np.array_equal(rows, c.inputs["v"][:, 0])
    assert not np.array_equal(rows, np.arange(8)), "the choice is random, not the first rows"


def test_npz_without_labels_and_with_several_inputs(tmp_path):
    np.savez(tmp_path / "d.npz", image=np.zeros((5, 3, 8, 8)), extra=np.ones((5, 6)))
    spec = InputSpec(
        inputs=[
            TensorSpec(name="image", shape=["batch", 3, 8, 8]),
            TensorSpec(name="extra", shape=["batch", 6]),
        ]
    )
    s = load_samples(str(tmp_path / "d.npz"), spec, None, Preprocess())
    assert s.labels is None
    assert s.inputs["image"].shape == (5, 3, 8, 8) and s.inputs["extra"].shape == (5, 6)
    assert all(v.dtype == np.float32 for v in s.inputs.values())


def test_npz_integer_input_dtype(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50, size=(6, 16)).astype(np.int32)
    np.savez(tmp_path / "d.npz", x=ids)
    spec = InputSpec(inputs=[TensorSpec(name="input_ids", shape=["batch", 16], dtype="int64")])
    s = load_samples(str(tmp_path / "d.npz"), spec, None, Preprocess())
    assert s.inputs["input_ids"].dtype == np.int64
    np.testing.assert_array_equal(s.inputs["input_ids"], ids)


def test_npz_shape_that_does_not_fit_the_model(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((4, 3, 8, 8)))
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", 3, 16, 16])])
    with pytest.raises(EdgekitError, match="'x'"):
        load_samples(str(tmp_path / "d.npz"), spec, None, Preprocess())


# module:function


@pytest.fixture
def batch_module(tmp_path, monkeypatch):
    (tmp_path / "calib_batches.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def arrays():
                for i in range(3):
                    yield np.full((4, 2), i, dtype=np.float64)

            def pairs():
                return [(np.full((4, 2), i, np.float32), np.full(4, i)) for i in range(3)]

            def dicts():
                return [{"a": np.full((2, 2), i, np.float32), "b": np.full((2, 3), -i)} for i in range(4)]

            def missing_input():
                return [{"a": np.zeros((2, 2))}]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "calib_batches"


VEC = InputSpec(inputs=[TensorSpec(name="v", shape=["batch", 2])])
TWO = InputSpec(inputs=[TensorSpec(name="a", shape=["batch", 2]), TensorSpec(name="b", shape=["batch", 3])])


def test_function_returning_arrays(batch_module):
    s = load_samples(f"{batch_module}:arrays", VEC, None, Preprocess())
    assert s.inputs["v"].shape == (12, 2) and s.inputs["v"].dtype == np.float32
    np.testing.assert_array_equal(s.inputs["v"][:, 0], np.repeat([0, 1, 2], 4))
    assert s.labels is None
    assert s.description == {"source": f"{batch_module}:arrays", "kind": "function", "count": 12}


def test_function_returning_pairs_with_limit(batch_module):
    s = load_samples(f"{batch_module}:pairs", VEC, 6, Preprocess())
    assert len(s) == 6 and s.description["count"] == 6
    assert s.labels.dtype == np.int64
    np.testing.assert_array_equal(s.labels, [0, 0, 0, 0, 1, 1])
    np.testing.assert_array_equal(s.inputs["v"][:, 0], s.labels)


def test_function_returning_dicts_for_two_inputs(batch_module):
    s = load_samples(f"{batch_module}:dicts", TWO, None, Preprocess())
    assert s.inputs["a"].shape == (8, 2) and s.inputs["b"].shape == (8, 3)
    assert s.inputs["b"].dtype == np.float32
    np.testing.assert_array_equal(s.inputs["b"][:, 0], -np.repeat([0, 1, 2, 3], 2))


def test_function_batch_missing_an_input(batch_module):
    with pytest.raises(EdgekitError, match="'b'"):
        load_samples(f"{batch_module}:missing_input", TWO, None, Preprocess())


# random


def test_random_says_so_and_is_seeded():
    spec = image_spec()
    a = load_samples("random", spec, 5, Preprocess(), seed=3)
    b = load_samples("random", spec, 5, Preprocess(), seed=3)
    c = load_samples("random", spec, 5, Preprocess(), seed=4)
    assert a.inputs["pixels"].shape == (5, 3, 16, 16) and a.inputs["pixels"].dtype == np.float32
    assert a.labels is None
    assert a.description["source"] == "random" and a.description["count"] == 5
    assert "random" in a.description["warning"]
    np.testing.assert_array_equal(a.inputs["pixels"], b.inputs["pixels"])
    assert not np.array_equal(a.inputs["pixels"], c.inputs["pixels"])


@pytest.mark.parametrize(
    ("shape", "batch_axis", "asked"),
    [
        (["batch", 3, "h", "w"], 0, "x:1,3,N,N"),
        ([1, 1, 64, "width"], 0, "x:1,1,64,N"),  # a fixed batch: the open axis is not it
        ([2, "batch", "steps"], 1, "x:2,1,N"),
    ],
)
def test_random_without_a_size_says_which_shape_to_give(shape, batch_axis, asked):
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=shape, batch_axis=batch_axis)])
    with pytest.raises(EdgekitError, match=f"--input-shape {asked} "):
        load_samples("random", spec, 5, Preprocess())


# split_holdout


def test_split_holdout_keeps_a_fifth_held_out():
    for n in [*range(2, 30), 99, 100, 101, 400]:
        for calib_size in (1, 5, 50, 300):
            s = Samples({"x": np.arange(n, dtype=np.float32)[:, None]}, np.arange(n))
            calib, held = split_holdout(s, calib_size)
            case = f"n={n}, calib_size={calib_size}: {len(calib)} calibration, {len(held)} held out"
            assert len(calib) + len(held) == n, case
            assert len(held) >= 0.2 * n, case
            assert 1 <= len(calib) <= calib_size, case
            assert len(calib) == min(calib_size, n - len(held)), case  # calibrates on all it may
            assert len(held) < 0.2 * n + 1 or len(calib) == calib_size, case  # holds out no more
            assert not set(calib.labels.tolist()) & set(held.labels.tolist()), case
            np.testing.assert_array_equal(held.inputs["x"][:, 0], held.labels)


def test_split_holdout_descriptions_count_each_part():
    s = Samples({"x": np.zeros((400, 1), np.float32)}, None, {"source": "calib.npz", "count": 400})
    calib, held = split_holdout(s, 300)
    assert calib.description == {"source": "calib.npz", "count": 300}
    assert held.description == {"source": "calib.npz", "count": 100, "held_out_from_calibration": True}
