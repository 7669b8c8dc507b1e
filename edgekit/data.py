"""Calibration and evaluation data: an image folder, a .npz, `module:function`, or `random`.

Every source becomes `Samples`: numpy inputs keyed by the model's input names, optional labels,
and a plain description of where they came from and how they were preprocessed (for the manifest).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.artifact import InputSpec
from edgekit.errors import EdgekitError, first_line
from edgekit.progress import progress

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Preprocess:
    """How images become tensors. `resize=None` means crop / 0.875, the ImageNet convention."""

    resize: int | None = None
    crop: int | None = None  # default: the model's input height/width
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channel_order: str = "rgb"  # or "bgr"
    layout: str = "nchw"  # or "nhwc"


@dataclass
class Samples:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values())))

    def take(self, idx) -> Samples:
        labels = None if self.labels is None else self.labels[idx]
        return Samples({k: v[idx] for k, v in self.inputs.items()}, labels, self.description)

    def batches(self, size: int):
        for i in range(0, len(self), size):
            yield {k: v[i : i + size] for k, v in self.inputs.items()}

    def outputs(self, run, size: int, label: str) -> list[np.ndarray]:
        """Every output of RUN (feeds -> list of arrays) over these samples in batches of SIZE,
        concatenated, with a progress bar named LABEL."""
        chunks = []
        with progress() as bar:
            task = bar.add_task(label, total=len(self))
            for feeds in self.batches(size):
                chunks.append(run(feeds))
                bar.advance(task, len(next(iter(feeds.values()))))
        return [np.concatenate(parts) for parts in zip(*chunks, strict=True)]


def recorded_preprocess(manifest) -> Preprocess:
    """The preprocessing an artifact's data was loaded with (its manifest records it), so later
    stages (bench --eval, build, run) read images exactly as compress did."""
    return Preprocess(**next((d["preprocess"] for d in manifest.data.values() if "preprocess" in d), {}))


def load_samples(
    source: str, spec: InputSpec, limit: int | None, pre: Preprocess, seed: int = 0, what="data"
) -> Samples:
    """Load up to `limit` samples from `source`, picked at random (seeded) when there are more."""
    if source == "random":
        return _random(spec, limit or 300, seed)
    path = Path(source)
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
    _check_shapes(samples, spec, source, what)
    return samples


def _random(spec: InputSpec, n: int, seed: int) -> Samples:
    from edgekit.model import example_inputs

    inputs = example_inputs(spec, batch=n, seed=seed)
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
    shape = spec.inputs[0].shape
    if len(shape) != 4:
        raise EdgekitError(f"--{what} {path}: images need a 4-d model input (N,C,H,W), but it is {shape}.")
    channels, height, width = (shape[1], shape[2], shape[3]) if pre.layout == "nchw" else shape[1:]
    crop = (pre.crop, pre.crop) if pre.crop else (height, width)
    resize = pre.resize or round(min(crop) / 0.875)
    mean, std = _norm(pre.mean, channels), _norm(pre.std, channels)
    arrays = []
    with progress() as bar:
        task = bar.add_task(f"reading {what} images", total=len(files))
        for f, _ in files:
            arrays.append(_read_image(f, channels, resize, crop, pre.channel_order))
            bar.advance(task)
    x = (np.stack(arrays).astype(np.float32) / 255.0 - mean) / std
    x = x.transpose(0, 3, 1, 2) if pre.layout == "nchw" else x
    labels = np.array([lab for _, lab in files], dtype=np.int64) if classes else None
    desc = {
        "source": str(path.absolute()),
        "kind": "image_folder",
        "count": len(files),
        "classes": classes,
        "preprocess": asdict(pre),
        "effective": {"resize": resize, "crop": list(crop)},
    }
    return Samples({spec.inputs[0].name: np.ascontiguousarray(x, np.float32)}, labels, desc)


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
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise EdgekitError(f"--{what} {path} cannot be read as a .npz ({first_line(e)}).") from None
    names = spec.names
    if len(names) == 1 and "x" in arrays:
        inputs = {names[0]: arrays["x"]}
    elif all(n in arrays for n in names):
        inputs = {n: arrays[n] for n in names}
    else:
        raise EdgekitError(
            f"--{what} {path} needs an array 'x' (or one per input: {', '.join(names)}); "
            f"it has {', '.join(arrays) or 'none'}."
        )
    labels = arrays.get("y")
    n = len(next(iter(inputs.values())))
    if n == 0:
        raise EdgekitError(f"--{what} {path} holds no samples.")
    idx = np.sort(np.random.default_rng(seed).permutation(n)[: limit or n])
    samples = Samples(inputs, None if labels is None else labels.astype(np.int64), {})
    samples = samples.take(idx)
    samples.description = {"source": str(path.absolute()), "kind": "npz", "count": len(idx)}
    return samples


def _function(source: str, spec: InputSpec, limit, what) -> Samples:
    """`module:function` returning an iterable of batches: an array, (x, y), or a dict."""
    mod_name, fn_name = source.split(":", 1)
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        batches = getattr(importlib.import_module(mod_name), fn_name)()
    except (ImportError, AttributeError) as e:
        raise EdgekitError(f"--{what} {source}: cannot import it ({first_line(e)}).") from None
    xs: dict[str, list] = {n: [] for n in spec.names}
    ys: list = []
    count = 0
    for batch in batches:
        x, y = batch if isinstance(batch, tuple) and len(batch) == 2 else (batch, None)
        feeds = x if isinstance(x, dict) else {spec.names[0]: x}
        for n in spec.names:
            if n not in feeds:
                raise EdgekitError(f"--{what} {source}: a batch has no input named {n!r}.")
            xs[n].append(np.asarray(feeds[n]))
        if y is not None:
            ys.append(np.asarray(y))
        count += len(xs[spec.names[0]][-1])
        if limit and count >= limit:
            break
    if count == 0:
        raise EdgekitError(f"--{what} {source} yielded no batches.")
    inputs = {n: np.concatenate(v)[:limit] for n, v in xs.items()}
    labels = np.concatenate(ys)[:limit].astype(np.int64) if len(ys) == len(xs[spec.names[0]]) else None
    return Samples(
        inputs, labels, {"source": source, "kind": "function", "count": min(count, limit or count)}
    )


def _check_shapes(samples: Samples, spec: InputSpec, source: str, what: str) -> None:
    for t in spec.inputs:
        arr = samples.inputs[t.name]
        want = t.shape[1:]
        if arr.ndim != len(t.shape) or any(
            isinstance(d, int) and d != s for d, s in zip(want, arr.shape[1:], strict=True)
        ):
            raise EdgekitError(
                f"--{what} {source}: input {t.name!r} has shape {list(arr.shape)}, but the model "
                f"expects {t.shape}; check the data or --input-shape."
            )
        samples.inputs[t.name] = np.ascontiguousarray(arr, dtype=t.dtype)


def split_holdout(samples: Samples, calib_size: int) -> tuple[Samples, Samples]:
    """Calibrate on the first `calib_size` samples and hold out the rest (at least 20 %)."""
    n = len(samples)
    cut = min(calib_size, n - max(1, -(-n // 5)))  # ceil: n // 5 holds out less than 20 %
    calib, held = samples.take(slice(0, cut)), samples.take(slice(cut, n))
    calib.description = {**samples.description, "count": cut}
    held.description = {**samples.description, "count": n - cut, "held_out_from_calibration": True}
    return calib, held
