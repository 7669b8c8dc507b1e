"""A speech model that computes its features in the graph (a waveform in, an STFT convolution, its
magnitude, a log): INT8 keeps that front end float and quantizes the layers after it. Quantized,
the front end rounds quiet audio to nothing: a waveform and its spectrum span more than 8 linear
bits (Silero VAD kept 82 % of its speech decisions that way, 99.9 % with the front end float)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from edgekit.compress import signal_front
from edgekit.compress.quantize import Int8Config, quantize_int8
from edgekit.data import Samples

BINS, WINDOW, HOP, SAMPLES = 33, 64, 32, 1024


class TinySpeech(nn.Module):
    """waveform [N, SAMPLES] -> |STFT| (a Conv1d with a Fourier basis) -> log -> two Conv1d -> 4 scores."""

    def __init__(self):
        super().__init__()
        t, f = torch.arange(WINDOW), torch.arange(BINS)[:, None]
        window = torch.hann_window(WINDOW)
        basis = (
            torch.cat([torch.cos(2 * torch.pi * f * t / WINDOW), -torch.sin(2 * torch.pi * f * t / WINDOW)])
            * window
        )
        self.stft = nn.Conv1d(1, 2 * BINS, WINDOW, HOP, bias=False)
        self.stft.weight.data = basis[:, None, :].float()
        self.encoder = nn.Sequential(
            nn.Conv1d(BINS, 32, 3, 1, 1), nn.ReLU(), nn.Conv1d(32, 32, 3, 2, 1), nn.ReLU()
        )
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        y = self.stft(x.unsqueeze(1))
        magnitude = torch.sqrt(y[:, :BINS] ** 2 + y[:, BINS:] ** 2)
        return self.head(self.encoder(torch.log(magnitude + 1e-5)).mean(-1))


def _audio(n: int, seed: int) -> np.ndarray:
    """Tone bursts and noise at levels from -60 to 0 dB full scale: speech next to near silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(SAMPLES) / 16000
    tones = np.sin(2 * np.pi * rng.uniform(100, 4000, (n, 1)) * t) + 0.3 * rng.standard_normal((n, SAMPLES))
    return (tones * 10 ** rng.uniform(-3, 0, (n, 1))).astype(np.float32)


def _int8(path, out) -> tuple[dict, np.ndarray]:
    summary = quantize_int8(path, out, Samples({"x": _audio(128, 0)}, None), Int8Config(adaround=False), None)
    x = _audio(200, 1)
    return summary, ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_signal_front_end_stays_float_and_the_rest_is_int8(tmp_path, monkeypatch):
    torch.manual_seed(0)
    path = tmp_path / "speech.onnx"
    torch.onnx.export(
        TinySpeech().eval(), (torch.from_numpy(_audio(1, 0)),), str(path), input_names=["x"],
        dynamic_axes={"x": {0: "N"}}, dynamo=False,
    )  # fmt: skip
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": _audio(200, 1)}
    )[0]
    summary, kept = _int8(path, tmp_path / "int8.onnx")
    assert summary["signal_front_float"]["ops"] == {"Conv": 1, "Pow": 2, "Sqrt": 1, "Log": 1}
    assert summary["quantized_ops"] == {"Conv": 2, "Gemm": 1}
    monkeypatch.setattr(signal_front, "front", lambda graph: [])
    _, rounded = _int8(path, tmp_path / "all.onnx")

    def sqnr(out):
        return 10 * np.log10(np.sum(ref**2) / np.sum((out - ref) ** 2))

    assert sqnr(kept) > sqnr(rounded) + 6, (sqnr(kept), sqnr(rounded))


def test_an_image_model_and_a_deep_magnitude_have_no_front_end(tmp_path):
    """A 4-D input is no signal; a LayerNorm written out with Pow and Sqrt three layers from a
    signal input is no front end either."""
    from tests.models import resnet_blocks

    module, shapes = resnet_blocks()
    torch.onnx.export(module, tuple(torch.randn(s) for s in shapes), str(tmp_path / "cnn.onnx"), dynamo=False)
    assert signal_front.front(onnx.load(str(tmp_path / "cnn.onnx")).graph) == []

    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.deep = nn.Sequential(
                nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)
            )

        def forward(self, x):
            h = self.deep(x)
            h = h - h.mean(-1, keepdim=True)
            return h / torch.sqrt((h**2).mean(-1, keepdim=True) + 1e-5)

    torch.onnx.export(Normed().eval(), (torch.randn(2, 64),), str(tmp_path / "deep.onnx"), dynamo=False)
    graph = onnx.load(str(tmp_path / "deep.onnx")).graph
    assert {n.op_type for n in graph.node} >= {"Pow", "Sqrt", "Gemm"}
    assert signal_front.front(graph) == []


class MelFront(nn.Module):
    """waveform -> real and imaginary STFT convolutions side by side -> power -> mel MatMul -> log dB:
    a feature extractor exported on its own (openWakeWord's melspectrogram.onnx)."""

    def __init__(self):
        super().__init__()
        t, f = torch.arange(WINDOW), torch.arange(BINS)[:, None]
        self.real = nn.Conv1d(1, BINS, WINDOW, HOP, bias=False)
        self.imag = nn.Conv1d(1, BINS, WINDOW, HOP, bias=False)
        self.real.weight.data = torch.cos(2 * torch.pi * f * t / WINDOW)[:, None].float()
        self.imag.weight.data = -torch.sin(2 * torch.pi * f * t / WINDOW)[:, None].float()
        self.mel = nn.Parameter(torch.rand(BINS, 8))

    def forward(self, x):
        x = x.unsqueeze(1)
        power = self.real(x).transpose(1, 2) ** 2 + self.imag(x).transpose(1, 2) ** 2
        return 10 * torch.log10(torch.clamp(power @ self.mel, min=1e-10))


class NormedHead(nn.Module):
    """[N, 16, 96] embeddings -> Linear -> a LayerNorm written out -> ReLU -> Linear -> sigmoid: a
    wake-word classifier (openWakeWord's hey_jarvis), whose features are no signal to keep float."""

    def __init__(self):
        super().__init__()
        self.first, self.second = nn.Linear(16 * 96, 64), nn.Linear(64, 1)

    def forward(self, x):
        h = self.first(x.flatten(1))
        h = h - h.mean(-1, keepdim=True)
        h = h / torch.sqrt((h**2).mean(-1, keepdim=True) + 1e-5)
        return torch.sigmoid(self.second(torch.relu(h)))


def test_a_whole_log_mel_front_end_is_found_and_a_normalized_first_layer_is_not(tmp_path):
    torch.onnx.export(MelFront().eval(), (torch.randn(2, SAMPLES),), str(tmp_path / "mel.onnx"), dynamo=False)
    graph = onnx.load(str(tmp_path / "mel.onnx")).graph
    assert signal_front.summary(graph, signal_front.front(graph))["ops"] == {
        "Conv": 2, "Pow": 2, "MatMul": 1, "Log": 1,
    }  # fmt: skip
    torch.onnx.export(
        NormedHead().eval(), (torch.randn(2, 16, 96),), str(tmp_path / "head.onnx"), dynamo=False
    )
    graph = onnx.load(str(tmp_path / "head.onnx")).graph
    assert {n.op_type for n in graph.node} >= {"Pow", "Sqrt", "Gemm", "ReduceMean"}
    assert signal_front.front(graph) == []


class OctaveFront(nn.Module):
    """waveform -> a constant-Q transform as nnAudio's CQT2010v2 computes it (Basic Pitch's front end):
    one octave's complex kernels at the full rate, then for each lower octave a low-pass filter from
    one channel to one with a decimation by 2 and the same kernels; the magnitudes stacked -> log ->
    a Conv1d: the lowest octave's magnitude is five compute ops from the input."""

    OCTAVES = 4

    def __init__(self):
        super().__init__()
        self.kernels = nn.Conv1d(1, 2 * BINS, WINDOW, HOP, bias=False)
        self.lowpass = nn.Conv1d(1, 1, 15, 2, 7, bias=False)
        self.lowpass.weight.data = torch.hann_window(15)[None, None] / 7.5
        self.encoder = nn.Conv1d(BINS * self.OCTAVES, 16, 3, 1, 1)

    def forward(self, x):
        x, octaves = x.unsqueeze(1), []
        for k in range(self.OCTAVES):
            if k:
                x = self.lowpass(x)
            y = self.kernels(x)[..., :3]  # the lowest octave's 3 frames
            octaves.append(torch.sqrt(y[:, :BINS] ** 2 + y[:, BINS:] ** 2 + 1e-9))
        return self.encoder(torch.log(torch.cat(octaves, 1)))


def test_a_constant_q_front_end_is_found_through_its_decimations(tmp_path):
    """A filter from one channel to one resamples the signal: it is no transform, and the octaves
    below the first are found with it (Basic Pitch: 26 of its 32 convolutions)."""
    torch.onnx.export(
        OctaveFront().eval(), (torch.randn(2, SAMPLES),), str(tmp_path / "cqt.onnx"), dynamo=False
    )
    graph = onnx.load(str(tmp_path / "cqt.onnx")).graph
    ops = signal_front.summary(graph, signal_front.front(graph))["ops"]
    assert ops["Conv"] == 2 * OctaveFront.OCTAVES - 1  # the kernels at each rate and the 3 low-passes
    assert ops["Sqrt"] == OctaveFront.OCTAVES and ops["Log"] == 1  # the encoder's Conv is not front


def test_a_model_that_is_only_a_front_end_is_refused_with_the_reason(tmp_path):
    import pytest

    from edgekit.errors import EdgekitError

    path = tmp_path / "mel.onnx"
    torch.onnx.export(
        MelFront().eval(), (torch.randn(2, SAMPLES),), str(path), input_names=["x"],
        dynamic_axes={"x": {0: "N"}}, dynamo=False,
    )  # fmt: skip
    with pytest.raises(EdgekitError, match="all compute its signal features"):
        quantize_int8(path, tmp_path / "int8.onnx", Samples({"x": _audio(32, 0)}, None), Int8Config(), None)
