"""Full-size benchmark architectures in plain torch (torchvision is not installable here):
ResNet-18 and MobileNetV2 shapes, random weights, 224×224 inputs."""

from __future__ import annotations

import torch
from torch import nn

from edgekit.demo import BasicBlock


def _bn_stats(model: nn.Module, seed: int) -> nn.Module:
    """Random BatchNorm affine parameters, and running statistics measured on image-like data
    (train-mode passes), as a trained model has: activations stay well scaled through the depth,
    so outputs depend on the input instead of collapsing to one class."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.normal_(0, 0.1, generator=g)
            m.momentum = None  # cumulative average over the passes below
    model.train()
    with torch.no_grad():
        for chunk in torch.from_numpy(smooth_images(64, seed=seed + 1)).split(16):
            model(chunk)
    return model.eval()


def resnet18(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.MaxPool2d(3, 2, 1),
    ]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return _bn_stats(nn.Sequential(*layers), seed)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


def mobilenet_v2(num_classes: int = 1000, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    settings = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    cin = 32
    for t, c, n, s in settings:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers += [
        nn.Conv2d(cin, 1280, 1, bias=False),
        nn.BatchNorm2d(1280),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1280, num_classes),
    ]
    return _bn_stats(nn.Sequential(*layers), seed)


def smooth_images(n: int, size: int = 224, seed: int = 0):
    """Image-like calibration data: low-frequency noise plus edges, normalised like ImageNet
    input. Random weights make task accuracy meaningless, so fidelity is what gets compared."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, size // 16, size // 16, generator=g)
    x = nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.3 * torch.randn(n, 3, size, size, generator=g)
    return x.clamp(-2.2, 2.6).numpy()
