"""Calibration and evaluation data: an image folder, a .npz, `module:function`, or `random`.

Every source becomes `Samples`: numpy inputs keyed by the model's input names, optional labels,
and a plain description of where they came from and how they were preprocessed (for the manifest).
The inputs are kept with the samples on axis 0 (a `batching.Stacked`, which puts each input's
batch back on its own axis when fed); an input may instead be a constant (`--calib-const sr=16000`,
or a 0-d array in a .npz), the same for every sample.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import batching
from edgekit.artifact import InputSpec, TensorSpec
from edgekit.errors import EdgekitError, first_line
from edgekit.progress import progress
from edgekit.user_code import load_function

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# samples taken from a `module:function` when no size is given: a generator may never end
UNSIZED_CAP = 10_000


@dataclass
class Preprocess:
    """How images become tensors. `resize=None` means crop / 0.875, the ImageNet convention."""

    resize: int | None = None
    crop: int | None = None  # default: the model's input height/width
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "rgb"  # or "bgr"
    layout: str = "auto"  # nchw, nhwc, or auto: from where the model's image input has 1 or 3 channels

    def __post_init__(self) -> None:
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(v) and v > 0 for v in self.std):
            raise EdgekitError(
                f"--mean {self.mean} and --std {self.std} must be finite, and every std positive "
                "(pixels are divided by it)."
            )


@dataclass
class Samples:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, idx) -> Samples:
        labels = None if self.labels is None else self.labels[idx]
        inputs = {k: v[idx] for k, v in self.inputs.items()}
        axes = getattr(self.inputs, "axes", None)
        return Samples(inputs if axes is None else batching.Stacked(inputs, axes), labels, self.description)

    def outputs(self, run, fixed: int | None, label: str, size: int = 32) -> list[np.ndarray]:
        """Every output of RUN (feeds -> list of arrays) over these samples, in the batches
        edgekit.batching gives a model whose batch is FIXED (or dynamic: None, up to SIZE),
        with a progress bar named LABEL."""
        with progress() as bar:
            task = bar.add_task(label, total=len(self))
            return batching.outputs(run, self.inputs, fixed, size, lambda n: bar.advance(task, n))


PADDING = "padding_mask"  # a description's: the input whose zeros are padding (compress.padding_mask)


def valid_positions(samples: Samples) -> np.ndarray | None:
    """SAMPLES' positions that are no padding ([N, T] booleans), where their description names a
    padding mask input."""
    name = samples.description.get(PADDING)
    if name is None or name not in samples.inputs:
        return None
    return np.asarray(samples.inputs[name]) != 0


def recorded_preprocess(manifest) -> Preprocess:
    """The preprocessing an artifact's data was loaded with (its manifest records it), so later
    stages (bench --eval, build, run) read images exactly as compress did."""
    return Preprocess(**next((d["preprocess"] for d in manifest.data.values() if "preprocess" in d), {}))


def load_samples(
    source: str,
    spec: InputSpec,
    limit: int | None,
    pre: Preprocess,
    seed: int = 0,
    what="data",
    constants: dict[str, Any] | None = None,
) -> Samples:
    """Load up to `limit` samples from `source`, picked at random (seeded) when there are more;
    CONSTANTS (input name -> value) give those inputs the same value in every sample."""
    fixed = _constants(constants or {}, spec)
    full, spec = spec, InputSpec(inputs=[t for t in spec.inputs if t.name not in fixed])
    if not spec.inputs:
        raise EdgekitError("--calib-const gives every input of the model; the data must give at least one.")
    samples = _load(source, spec, limit, pre, seed, what)
    samples.inputs = {**samples.inputs, **_repeated(fixed, len(samples))}
    if fixed:  # beside any the data itself holds constant (a .npz's 0-d arrays)
        given = {**samples.description.get("constants", {}), **_described(fixed)}
        samples.description = {**samples.description, "constants": given}
    _check_shapes(samples, full, source, what)
    samples.inputs = batching.Stacked(samples.inputs, {t.name: t.batch_axis for t in full.inputs})
    return samples


def parse_constants(texts: tuple[str, ...]) -> dict[str, Any]:
    """`--calib-const sr=16000` values (a number, or a JSON list) as {input name: value}."""
    out = {}
    for text in texts:
        name, eq, value = text.partition("=")
        try:
            out[name] = json.loads(value) if eq and name else None
        except ValueError:
            out[name] = None
        if out[name] is None:
            raise EdgekitError(
                f"--calib-const {text!r} is not NAME=VALUE with a number or a JSON list (sr=16000)."
            )
    return out


def _constants(given: dict[str, Any], spec: InputSpec) -> dict[str, np.ndarray]:
    """GIVEN constants as arrays of their inputs' dtypes and one sample's shape, each checked."""
    inputs = {t.name: t for t in spec.inputs}
    out = {}
    for name, value in given.items():
        flag = f"--calib-const {name}"
        if name not in inputs:
            raise EdgekitError(
                f"{flag}: the model has no input {name!r}; its inputs are {', '.join(inputs)}."
            )
        t = inputs[name]
        try:
            arr = np.asarray(value)
            cast = arr.astype(t.dtype)
        except (ValueError, TypeError, OverflowError) as e:
            raise EdgekitError(f"{flag}: {value!r} is not an array of {t.dtype} ({first_line(e)}).") from None
        exact = np.issubdtype(cast.dtype, np.floating) or np.array_equal(cast, arr)
        if arr.dtype.kind not in "biuf" or not exact:
            raise EdgekitError(f"{flag}: {value!r} cannot be held exactly by the input's dtype, {t.dtype}.")
        want = _sample_shape(t)
        if cast.ndim != len(want) or any(
            isinstance(d, int) and d != s for d, s in zip(want, cast.shape, strict=True)
        ):
            raise EdgekitError(
                f"{flag} has shape {list(cast.shape)}, but one sample of input {name!r} (shape "
                f"{t.shape}) has shape {want}."
            )
        out[name] = cast
    return out


def _sample_shape(t: TensorSpec) -> list[int | str]:
    """The shape of one sample of input T: its shape less the batch axis (a scalar's: its own)."""
    return t.shape if t.batch_axis is None else [d for i, d in enumerate(t.shape) if i != t.batch_axis]


def _one_sample(t: TensorSpec) -> list[int]:
    """The shape of one sample of input T, every axis sized (its example's where symbolic)."""
    shape = list(t.concrete_shape(1))
    return shape if t.batch_axis is None else shape[: t.batch_axis] + shape[t.batch_axis + 1 :]


def with_examples(spec: InputSpec, samples: Samples | None) -> InputSpec:
    """SPEC with the one-sample shape SAMPLES hold recorded for each input whose axes other than the
    batch are symbolic (TensorSpec.example): what bench times and random inputs are drawn at."""
    if samples is None or not any(t.open_axes for t in spec.inputs):
        return spec
    out = spec.model_copy(deep=True)
    for t in out.inputs:
        if t.open_axes and t.name in samples.inputs:
            shape = list(np.shape(samples.inputs[t.name])[1:])
            t.example = shape if t.batch_axis is None else [*shape[: t.batch_axis], 1, *shape[t.batch_axis :]]
    return out


def _repeated(constants: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    """CONSTANTS as N samples alike (views: no copies)."""
    return {k: np.broadcast_to(v, (n, *v.shape)) for k, v in constants.items()}


def _described(constants: dict[str, np.ndarray]) -> dict[str, Any]:
    """CONSTANTS for the manifest: small values as they are, larger ones by shape."""
    return {k: v.tolist() if v.size <= 16 else f"array {list(v.shape)}" for k, v in constants.items()}


def _load(source: str, spec: InputSpec, limit: int | None, pre: Preprocess, seed: int, what) -> Samples:
    """The samples of SPEC's inputs that SOURCE holds (as `load_samples` says)."""
    if source == "random":
        return _random(spec, limit or 300, seed)
    path = Path(source)
    if path.exists() and not (path.is_dir() or path.is_file()):
        raise EdgekitError(
            f"--{what} {source} is not a regular file or a folder (a pipe, socket or device is never "
            "read: it may not end); save the data to a .npz or an image folder."
        )
    if path.is_dir():
        samples = _image_folder(path, spec, limit, pre, seed, what)
    elif path.suffix == ".npz":
        samples = _npz(path, spec, limit, seed, what)
    elif ":" in source and not path.exists():
        samples = _function(source, spec, limit, what)
    elif not path.exists():
        raise EdgekitError(
            f"--{what} {source}: no such file or directory (expected an image folder, "
            "a .npz with x and y, module:function, or 'random' for calibration)."
        )
    else:
        raise EdgekitError(f"--{what} {source} is not a directory, a .npz file or module:function.")
    return samples


def _random(spec: InputSpec, n: int, seed: int) -> Samples:
    from edgekit.model import example_inputs

    unsized = next((t for t in spec.inputs if t.open_axes and not t.example), None)
    if unsized is not None:
        example = ",".join(
            str(d) if isinstance(d, int) else "1" if i == unsized.batch_axis else "N"
            for i, d in enumerate(unsized.shape)
        )
        raise EdgekitError(
            f"random inputs need a size for every axis, and input {unsized.name!r} has shape "
            f"{unsized.shape} ({', '.join(unsized.open_axes)} unknown); give real data, or the sizes "
            f"with --input-shape {unsized.name}:{example} (N your sizes)."
        )
    # N samples, also for a fixed-batch model (whose batch axis would give its batch size)
    samples = [TensorSpec(name=t.name, shape=["n", *_one_sample(t)], dtype=t.dtype) for t in spec.inputs]
    inputs = example_inputs(InputSpec(inputs=samples), batch=n, seed=seed)
    return Samples(
        inputs,
        None,
        {
            "source": "random",
            "count": n,
            "warning": "calibrated on random noise, not real data: INT8 ranges may not fit "
            "real inputs, and fidelity was measured on noise",
        },
    )


def _image_folder(path, spec, limit, pre: Preprocess, seed, what) -> Samples:
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        files = [
            (f, i)
            for i, c in enumerate(classes)
            for f in sorted((path / c).rglob("*"))
            if f.suffix.lower() in IMAGE_EXTS
        ]
    else:
        files = [(f, -1) for f in sorted(path.iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    odd = next((f for f, _ in files if not f.is_file()), None)
    if odd is not None:
        raise EdgekitError(f"--{what} {path}: {odd} is not a regular file (a pipe or device is never read).")
    if not files:
        raise EdgekitError(
            f"--{what} {path} holds no images ({', '.join(sorted(IMAGE_EXTS))}); use an "
            "ImageFolder layout: one sub-folder of images per class."
        )
    order = np.random.default_rng(seed).permutation(len(files))
    files = [files[i] for i in order[: limit or len(files)]]
    if len(spec.inputs) != 1:
        raise EdgekitError(
            f"--{what} {path}: an image folder feeds one input, but the model has "
            f"{len(spec.inputs)}; use a .npz or module:function."
        )
    tensor = spec.inputs[0]
    shape = tensor.shape
    if len(shape) != 4:
        raise EdgekitError(f"--{what} {path}: images need a 4-d model input (N,C,H,W), but it is {shape}.")
    layout = image_layout(shape, pre.layout)
    channels, height, width = shape[1:] if layout == "nchw" else (shape[3], shape[1], shape[2])
    if channels not in (1, 3):
        raise EdgekitError(
            f"--{what} {path}: images have 1 or 3 channels, but input {tensor.name!r} {shape} read as "
            f"{layout} has {channels}; pass --layout {'nhwc' if layout == 'nchw' else 'nchw'}, or a .npz."
        )
    if not pre.crop and not (isinstance(height, int) and isinstance(width, int)):
        raise EdgekitError(
            f"--{what} {path}: input {tensor.name!r} {shape} has no fixed image size; give the size to "
            "read images at with --crop SIZE (and --resize), or fix it with --input-shape."
        )
    crop = (pre.crop, pre.crop) if pre.crop else (height, width)
    resize = pre.resize or round(min(crop) / 0.875)
    pixels = np.dtype(tensor.dtype).kind in "iu"  # the model takes pixels and normalises them itself
    if not pixels:
        mean, std = _norm(pre.mean, channels), _norm(pre.std, channels)
    arrays = []
    with progress() as bar:
        task = bar.add_task(f"reading {what} images", total=len(files))
        for f, _ in files:
            arrays.append(_read_image(f, channels, resize, crop, pre.channel_order))
            bar.advance(task)
    x = np.stack(arrays) if pixels else (np.stack(arrays).astype(np.float32) / 255.0 - mean) / std
    x = x.transpose(0, 3, 1, 2) if layout == "nchw" else x
    labels = np.array([lab for _, lab in files], dtype=np.int64) if classes else None
    desc = {
        "source": str(path.absolute()),
        "kind": "image_folder",
        "count": len(files),
        "classes": classes,
        "preprocess": asdict(pre),
        "effective": {"resize": resize, "crop": list(crop), "layout": layout}
        | ({"pixels": f"0-255 as {tensor.dtype}, not normalised (--mean/--std unused)"} if pixels else {}),
    }
    x = np.ascontiguousarray(x, tensor.dtype if pixels else np.float32)
    return Samples({tensor.name: x}, labels, desc)


def image_layout(shape: list, asked: str) -> str:
    """nchw or nhwc: as ASKED, or for auto where the 4-d input SHAPE has its 1 or 3 channels (a
    tf2onnx or TFLite export's NHWC image), channels-first when both or neither axis could be."""
    if asked != "auto":
        return asked
    return "nhwc" if shape[3] in (1, 3) and shape[1] not in (1, 3) else "nchw"


def _norm(values, channels):
    values = tuple(values)
    if len(values) == channels:
        return np.array(values, np.float32)
    if len(values) == 3 and channels == 1:
        return np.array([sum(values) / 3], np.float32)
    raise EdgekitError(f"--mean/--std have {len(values)} values but the model has {channels} channels.")


def _read_image(f: Path, channels: int, resize: int, crop, order: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            w, h = im.size
            scale = resize / min(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - crop[1]) // 2, (h - crop[0]) // 2
            im = im.crop((left, top, left + crop[1], top + crop[0]))
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise EdgekitError(f"{f} cannot be decoded as an image ({first_line(e)}).") from None
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    return arr[:, :, ::-1] if order == "bgr" else arr


def _npz(path: Path, spec: InputSpec, limit, seed, what) -> Samples:
    where = f"--{what} {path}"
    if not zipfile.is_zipfile(path):
        raise EdgekitError(f"{where} is not a .npz archive (a zip of arrays, as np.savez writes).")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise EdgekitError(f"{where} cannot be read as a .npz ({first_line(e)}).") from None
    names = spec.names
    if len(names) == 1 and "x" in arrays:
        named = {"x": arrays["x"]}
    elif all(n in arrays for n in names):
        named = {n: arrays[n] for n in names}
    else:
        raise EdgekitError(
            f"{where} needs an array 'x' (or one per input: {', '.join(names)}); "
            f"it has {', '.join(arrays) or 'none'}."
        )
    keys = dict(zip(names, named, strict=True))  # each input's key in the file, for the sentences
    named = dict(zip(names, named.values(), strict=True))
    constants = {k: v for k, v in named.items() if v.ndim == 0 and len(named) > 1}
    named = {k: _samples_first(v, arrays, k, spec, where) for k, v in named.items() if k not in constants}
    labels = arrays.get("y")
    n = _common_length({**{keys[k]: v for k, v in named.items()}, "y": labels}, where)
    if n == 0:
        raise EdgekitError(f"{where} holds no samples.")
    idx = np.sort(np.random.default_rng(seed).permutation(n)[: limit or n])
    picked = {k: v[idx] for k, v in named.items()}
    _check_finite(picked, where, idx)
    inputs = {k: picked[k] if k in picked else _repeated({k: constants[k]}, len(idx))[k] for k in names}
    labels = None if labels is None else _labels(labels[idx], where, idx)
    desc = {"source": str(path.absolute()), "kind": "npz", "count": len(idx)}
    if constants:  # one value for every sample: what fixed_branches may decide control flow by
        desc["constants"] = _described(constants)
    return Samples(inputs, labels, desc)


def _samples_first(arr: np.ndarray, arrays: dict, name: str, spec: InputSpec, where: str) -> np.ndarray:
    """ARR of input NAME with its samples on axis 0: they are on the axis the .npz records as
    `NAME.batch_axis` (a 0-d integer), else on the input's batch axis (--batch-axis)."""
    t = next(t for t in spec.inputs if t.name == name)
    key = f"{name}.batch_axis"
    axis = arrays.get(key, t.batch_axis or 0)
    if np.ndim(axis) or np.asarray(axis).dtype.kind not in "iu" or not 0 <= int(axis) < max(arr.ndim, 1):
        raise EdgekitError(
            f"{where}: the batch axis of {name!r} ({axis.tolist() if key in arrays else axis}) is not an "
            f"axis of its array, whose shape is {list(arr.shape)}."
        )
    return np.moveaxis(arr, int(axis), 0) if arr.ndim else arr


def _function(source: str, spec: InputSpec, limit, what) -> Samples:
    """`module:function` returning an iterable of batches: an array, (x, y), or a dict. At most
    LIMIT samples (UNSIZED_CAP without one) are taken, and then the iteration stops."""
    where = f"--{what} {source}"
    cap = limit or UNSIZED_CAP
    xs: dict[str, list] = {n: [] for n in spec.names}
    ys: list = []
    count = 0
    for i, batch in enumerate(_batches(source, where)):
        x, y = batch if isinstance(batch, tuple) and len(batch) == 2 else (batch, None)
        feeds = x if isinstance(x, dict) else {spec.names[0]: x}
        missing = next((n for n in spec.names if n not in feeds), None)
        if missing is not None:
            raise EdgekitError(f"{where}: a batch has no input named {missing!r}.")
        named = {
            t.name: _function_array(feeds[t.name], t, f"{where}: batch {i}, input {t.name!r}")
            for t in spec.inputs
        }
        labels = None if y is None else _batch_array(y, f"{where}: batch {i}, y")
        count += _common_length({**named, "y": labels}, f"{where}: batch {i}")
        for n, v in named.items():
            xs[n].append(v)
        if labels is not None:
            ys.append(labels)
        if count >= cap:
            break
    if count == 0:
        raise EdgekitError(f"{where} yielded no samples.")
    inputs = {n: np.concatenate(v)[:cap] for n, v in xs.items()}
    _check_finite(inputs, where)
    labels = _labels(np.concatenate(ys)[:cap], where) if len(ys) == len(xs[spec.names[0]]) else None
    desc = {"source": source, "kind": "function", "count": min(count, cap)}
    if limit is None and count >= cap:
        desc["warning"] = (
            f"took the first {cap:,} samples of {source}, the most taken from a function without a size"
            + ("; --eval-size sets it" if what == "eval" else "")
        )
    return Samples(inputs, labels, desc)


def _batches(source: str, where: str):
    """The batches `module:function` returns, one by one; the user's code failing, or returning
    what is not an iterable of batches, is one sentence naming SOURCE."""
    fn = load_function(source, where.removesuffix(f" {source}"))
    try:
        batches = fn()
        if isinstance(batches, (np.ndarray, dict, str, bytes)) or not isinstance(batches, Iterable):
            got = "None" if batches is None else f"an object of type {type(batches).__name__}"
            raise EdgekitError(
                f"{where} returned {got}; it must return an iterable (a list or generator) of "
                "batches: arrays, (x, y) pairs or dicts of input arrays."
            )
        yield from batches
    except EdgekitError:
        raise
    except Exception as e:
        raise EdgekitError(f"{where} raised {type(e).__name__}: {first_line(e)}.") from None


def _function_array(value, t: TensorSpec, where: str) -> np.ndarray:
    """One input of a `module:function` item, samples first: one sample (a dict per sample, without
    the batch axis), or a batch with the samples on the input's batch axis."""
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise EdgekitError(f"{where} is not an array ({first_line(e)}).") from None
    if arr.ndim == len(_sample_shape(t)):
        return arr[None]
    arr = _batch_array(arr, where)
    return np.moveaxis(arr, t.batch_axis, 0) if t.batch_axis and arr.ndim == len(t.shape) else arr


def _batch_array(value, where: str) -> np.ndarray:
    """One array of a `module:function` batch: array-like, with a batch axis."""
    try:
        arr = np.asarray(value)
    except Exception as e:
        raise EdgekitError(f"{where} is not an array ({first_line(e)}).") from None
    if arr.ndim == 0:
        raise EdgekitError(f"{where} is a single value, not a batch of samples.")
    return arr


def _common_length(arrays: dict[str, np.ndarray | None], where: str) -> int:
    """The number of samples: the rows every array (inputs, labels) must have alike."""
    rows = {k: len(v) for k, v in arrays.items() if v is not None and v.ndim}
    scalar = next((k for k, v in arrays.items() if v is not None and not v.ndim), None)
    if scalar is not None:
        raise EdgekitError(f"{where}: {scalar} is a single value, not one row per sample.")
    (a, n), *rest = rows.items()
    for b, m in rest:
        if m != n:
            raise EdgekitError(f"{where}: {a} has {n} rows but {b} has {m}; give one row per sample in each.")
    return n


def _labels(y: np.ndarray, where: str, rows=None) -> np.ndarray:
    """Class labels as int64: one whole number per sample (ROWS: the file row of each, for the message)."""
    if y.ndim != 1:
        raise EdgekitError(
            f"{where}: y has shape {list(y.shape)}; labels are one class number per sample (not one-hot)."
        )
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    whole = np.isfinite(y) & (y == np.round(y)) if y.dtype.kind == "f" else np.zeros(len(y), bool)
    if not whole.all():
        i = int(np.argmin(whole))
        raise EdgekitError(
            f"{where}: labels must be whole class numbers (0, 1, ...), but the label of sample "
            f"{i if rows is None else int(rows[i])} is {y[i].item()!r}."
        )
    return y.astype(np.int64)


def _check_finite(inputs: dict[str, np.ndarray], where: str, rows=None) -> None:
    """NaN or Inf in float inputs would surface later as a diverging model: name the sample now
    (ROWS: the file row of each loaded sample)."""
    for name, arr in inputs.items():
        if arr.dtype.kind != "f":
            continue
        bad = ~np.isfinite(arr).all(axis=tuple(range(1, arr.ndim)))
        if bad.any():
            i = int(np.argmax(bad))
            kind = "NaN" if np.isnan(arr[i]).any() else "Inf"
            of = "" if len(inputs) == 1 else f" of {name}"
            raise EdgekitError(
                f"{where}: sample {i if rows is None else int(rows[i])}{of} holds {kind}; models and "
                "INT8 ranges need finite numbers, so fix or drop that sample."
            )


def _check_shapes(samples: Samples, spec: InputSpec, source: str, what: str) -> None:
    """Each input's samples (on axis 0) fit the model's input less its batch axis, and its dtype;
    an input fed as it is (a scalar) must be alike in every sample."""
    for t in spec.inputs:
        arr = samples.inputs[t.name]
        want = _sample_shape(t)
        if arr.ndim != len(want) + 1 or any(
            isinstance(d, int) and d != s for d, s in zip(want, arr.shape[1:], strict=True)
        ):
            moved = f" (its samples moved from axis {t.batch_axis} to 0)" if t.batch_axis else ""
            raise EdgekitError(
                f"--{what} {source}: input {t.name!r} has shape {list(arr.shape)}{moved}, but the model "
                f"expects {t.shape}; check the data, --input-shape or --batch-axis."
                if t.shape
                else f"--{what} {source}: input {t.name!r} is a scalar, but the data gives it shape "
                f"{list(arr.shape[1:])}; give it with --calib-const {t.name}=VALUE."
            )
        if t.batch_axis is None and source != "random" and len(arr) and not (arr == arr[:1]).all():
            raise EdgekitError(
                f"--{what} {source}: input {t.name!r} is a scalar, fed as it is to every batch, but the "
                f"data gives it different values; give it once with --calib-const {t.name}=VALUE."
            )
        try:
            with np.errstate(over="raise", invalid="raise"):
                samples.inputs[t.name] = np.ascontiguousarray(arr, dtype=t.dtype)
        except (ValueError, TypeError, FloatingPointError) as e:
            raise EdgekitError(
                f"--{what} {source}: input {t.name!r} holds values that {t.dtype} cannot hold "
                f"({first_line(e)})."
            ) from None


def check_labels(samples: Samples, scores: np.ndarray) -> None:
    """Labels outside the classes a model scores (SCORES: its output, N x classes) would read as 0 %
    top-1: refuse them, naming the labels found and the classes the model outputs."""
    labels = samples.labels
    if labels is None or scores.ndim != 2 or not len(labels):
        return
    low, high, classes = int(labels.min()), int(labels.max()), scores.shape[1]
    if low < 0 or high >= classes:
        raise EdgekitError(
            f"the labels of {samples.description.get('source', 'the data')} run from {low} to {high}, "
            f"but the model outputs {classes} classes (labels 0 to {classes - 1}); check that the data "
            "belongs to this model."
        )


def split_holdout(samples: Samples, calib_size: int) -> tuple[Samples, Samples]:
    """Calibrate on the first `calib_size` samples and hold out the rest (at least 20 %)."""
    n = len(samples)
    cut = min(calib_size, n - max(1, -(-n // 5)))  # ceil: n // 5 holds out less than 20 %
    calib, held = samples.take(slice(0, cut)), samples.take(slice(cut, n))
    calib.description = {**samples.description, "count": cut}
    held.description = {**samples.description, "count": n - cut, "held_out_from_calibration": True}
    return calib, held
