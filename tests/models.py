"""One shared factory of tiny test models, in plain torch (no torchvision).

Each factory returns `(module.eval(), input shapes)`; the shapes have batch 1 first. Weights are
seeded, and BatchNorm running statistics are made non-trivial (a few train-mode passes on shifted,
scaled random data, plus random affine parameters), so folding BN into convs is really exercised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit.demo import BasicBlock

Shapes = list[tuple[int, ...]]
SPEECH_LENGTH, SPEECH_HIDDEN = 300, 64


def _settle_batchnorm(module: nn.Module, shapes: Shapes, dtypes: list[torch.dtype] | None = None) -> None:
    """Randomise BN affine parameters and fill its running stats from data that is not N(0, 1)."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.momentum = None  # cumulative average over the passes below
        module.train()
        for _ in range(4):
            args = []
            for i, shape in enumerate(shapes):
                batch_shape = (8, *shape[1:])
                if dtypes and not dtypes[i].is_floating_point:
                    args.append(torch.randint(0, 2, batch_shape, dtype=dtypes[i]))
                else:
                    args.append(torch.randn(batch_shape) * 1.7 + 0.4)
            module(*args)
    module.eval()
    for bn in bns:
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet_blocks(seed: int = 0) -> tuple[nn.Module, Shapes]:
    """Stem, an identity basic block and a strided one with a downsample branch, a linear head."""
    torch.manual_seed(seed)
    shapes = [(1, 3, 32, 32)]
    model = TinyResNet()
    _settle_batchnorm(model, shapes)
    return model.eval(), shapes


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        s = torch.mean(x, dim=(2, 3), keepdim=True)
        s = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s


class InvertedResidual(nn.Module):
    """MobileNetV3 block: 1x1 expand, 3x3 depthwise, squeeze-excite, 1x1 project, residual add."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        hidden = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden))
        self.depthwise = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden)
        )
        self.se = SqueezeExcite(hidden, hidden // 4)
        self.project = nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.act = nn.Hardswish()

    def forward(self, x):
        y = self.act(self.expand(x))
        y = self.act(self.depthwise(y))
        return x + self.project(self.se(y))


class TinyMobileNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish())
        self.block = InvertedResidual(16, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.block(self.stem(x))), 1))


def depthwise_se(seed: int = 0) -> tuple[nn.Module, Shapes]:
    """A MobileNetV3-style depthwise-separable block with squeeze-excite and hardswish."""
    torch.manual_seed(seed)
    shapes = [(1, 3, 32, 32)]
    model = TinyMobileNet()
    _settle_batchnorm(model, shapes)
    return model.eval(), shapes


SEQ, D_MODEL, VOCAB = 16, 32, 50


class TinyEncoder(nn.Module):
    """A 2-layer nn.TransformerEncoder (batch_first): (B, seq, d) float in, (B, seq, d) out."""

    def __init__(self):
        super().__init__()
        layer = nn.TransformerEncoderLayer(D_MODEL, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(D_MODEL)

    def forward(self, tokens):
        return self.norm(self.encoder(tokens))


class TinyTokenClassifier(nn.Module):
    """Token ids (B, seq) int64 -> embedding + positions -> 2-layer encoder -> mean -> class scores."""

    def __init__(self, classes: int = 5):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Parameter(torch.randn(1, SEQ, D_MODEL) * 0.1)
        layer = nn.TransformerEncoderLayer(D_MODEL, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, classes)

    def forward(self, input_ids):
        h = self.encoder(self.embed(input_ids) + self.pos)
        return self.head(h.mean(dim=1))


def transformer(seed: int = 0) -> tuple[nn.Module, Shapes]:
    """Float token embeddings (B, 16, 32) in, encoded tokens out."""
    torch.manual_seed(seed)
    return TinyEncoder().eval(), [(1, SEQ, D_MODEL)]


def transformer_ids(seed: int = 0) -> tuple[nn.Module, Shapes]:
    """Integer token ids (B, 16), int64, in; class scores (B, 5) out."""
    torch.manual_seed(seed)
    return TinyTokenClassifier().eval(), [(1, SEQ)]


class TwoInTwoOut(nn.Module):
    """An image and a feature vector in; class scores and an embedding out."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.mix = nn.Linear(8 + 6, 12)
        self.classifier = nn.Linear(12, 4)

    def forward(self, image, extra):
        f = torch.flatten(self.pool(self.features(image)), 1)
        embedding = torch.tanh(self.mix(torch.cat([f, extra], dim=1)))
        return self.classifier(embedding), embedding


def two_in_two_out(seed: int = 0) -> tuple[nn.Module, Shapes]:
    torch.manual_seed(seed)
    shapes = [(1, 3, 16, 16), (1, 6)]
    model = TwoInTwoOut()
    _settle_batchnorm(model, shapes)
    return model.eval(), shapes


def smooth_images(n: int, shape: tuple[int, ...] = (3, 32, 32), seed: int = 0) -> np.ndarray:
    """Image-like float32 inputs (N, C, H, W): low-resolution noise upsampled bilinearly, so
    neighbouring pixels correlate as in photos, scaled roughly like normalised ImageNet data."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    low = torch.randn(n, c, max(1, h // 4), max(1, w // 4), generator=g)
    x = nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (x * 1.2 + 0.1).numpy().astype(np.float32)


def margin_classifier(path) -> None:
    """An ONNX classifier written to PATH: Conv-ReLU-Conv-ReLU-pool-Gemm, 3x32x32 -> 10 classes,
    dynamic batch, seeded weights; it is centred on the pooled features of smooth images, so its
    predictions spread over the classes with small margins, which INT8 flips for some images:
    every INT8 model of it loses accuracy, by an amount its config decides."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)),
        "b1": rng.normal(0, 0.1, 8),
        "w2": rng.normal(0, 0.2, (16, 8, 3, 3)),
        "b2": rng.normal(0, 0.1, 16),
        "w3": rng.normal(0, 1.0, (10, 16)),
        "b3": np.zeros(10),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1, name="fc"),
    ]

    def model(outputs: list[str]) -> onnx.ModelProto:
        graph = helper.make_graph(
            nodes,
            "classifier",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
            [
                helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", 16 if o == "f" else 10])
                for o in outputs
            ],
            [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    probe = ort.InferenceSession(model(["f"]).SerializeToString(), providers=["CPUExecutionProvider"])
    f = probe.run(None, {"x": smooth_images(256, seed=9)})[0]
    w["w3"] /= f.std(0) + 1e-6
    w["b3"] = -(w["w3"] @ f.mean(0))
    onnx.save(model(["logits"]), str(path))


def pooled_classifier(folder) -> Path:
    """An ONNX classifier exported into FOLDER (its path returned): two strided Conv-ReLUs, a global
    pool and a Linear head over its 64 features (their spread normalized on smooth images, so the
    classes compete), 3x32x32 -> 10 classes, dynamic batch, seeded weights."""
    from edgekit.artifact import InputSpec, TensorSpec
    from edgekit.export.onnx import ExportConfig, export

    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10),
    ).eval()  # fmt: skip
    with torch.no_grad():
        f = m[:6](torch.from_numpy(smooth_images(256, seed=9)))
        m[6].weight /= f.std(0) * 3
        m[6].bias -= m[6].weight @ f.mean(0)
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", 3, 32, 32])])
    return export(m, spec, folder, ExportConfig(), 1)


def save_onnx(path, nodes, inputs, outputs, inits=(), opset: int = 17) -> None:
    """NODES, with graph INPUTS and OUTPUTS (value infos) and initializers INITS, saved at PATH as
    a model of OPSET and IR version 8 (what the onnxruntime here reads)."""
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(path))


def speech_model(path) -> Path:
    """A streaming speech model as Silero VAD's are: audio [N, L], a state batched on its second
    axis [2, N, H] and a scalar int64 sample rate; out[N, 10] = (audio @ W + mean(state over its
    first axis) * sr / 16000) @ V: every input matters."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(
            rng.standard_normal((SPEECH_LENGTH, SPEECH_HIDDEN)).astype(np.float32) * 0.05, "W"
        ),
        numpy_helper.from_array(rng.standard_normal((SPEECH_HIDDEN, 10)).astype(np.float32) * 0.2, "V"),
        numpy_helper.from_array(np.array(1 / 16000, np.float32), "per_hz"),
    ]
    nodes = [
        helper.make_node("MatMul", ["audio", "W"], ["h"]),
        helper.make_node("ReduceMean", ["state"], ["s"], axes=[0], keepdims=0),
        helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["srf", "per_hz"], ["scale"]),
        helper.make_node("Mul", ["s", "scale"], ["ss"]),
        helper.make_node("Add", ["h", "ss"], ["z"]),
        helper.make_node("Relu", ["z"], ["r"]),
        helper.make_node("MatMul", ["r", "V"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "speech",
        [
            helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", SPEECH_LENGTH]),
            helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", SPEECH_HIDDEN]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path
