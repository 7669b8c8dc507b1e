"""One dev-zoo model as the bench and the slow tests drive it: the file a user would hand to
`edgekit compress`, how to load it, its calibration and evaluation data, and the kind of each output."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ZooCase:
    name: str  # e.g. "minilm", "craft", "crnn"
    model: Path  # the model file a user has: an fp32 .onnx (as its exporter wrote it) or a .pt/.pth
    calib: Path  # calibration data edgekit reads (a .npz, or an image folder)
    eval: Path  # held-out evaluation data, the same format
    kinds: dict[str, str]  # output name -> kind (classes, embedding, sequence, dense, other)
    args: list[str] = field(default_factory=list)  # extra `edgekit compress` arguments (--arch ...)
    data: str = ""  # what the data is, one line, for the table
