"""Real fp32 and INT8 artifacts of the tiny ResNet from tests/models.py, made with
edgekit.pipeline.compress, for tests that need something to benchmark but not a trained model;
and rewrite_manifest, for a test that needs an edited manifest edgekit accepts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from models import resnet_blocks, smooth_images

from edgekit.artifact import MANIFEST, manifest_digest
from edgekit.compress.quantize import Int8Config
from edgekit.passes import from_flags
from edgekit.pipeline import CompressRequest, compress


@dataclass(frozen=True)
class TinyPair:
    fp32: Path
    int8: Path
    eval: Path  # .npz: x and labels y (the fp32 model's own top-1, so fp32 scores 100 %)


def tiny_pair(root: Path) -> TinyPair:
    """Export the tiny ResNet (dynamic batch), then compress it to fp32 and INT8 artifacts."""
    module, shapes = resnet_blocks()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(module, (torch.zeros(2, *shapes[0][1:]),), dynamic_shapes=({0: batch},))
    model = root / "tiny.pt2"
    torch.export.save(ep, str(model))
    calib = root / "calib.npz"
    np.savez(calib, x=smooth_images(64, seed=1))
    x = smooth_images(48, seed=2)
    with torch.inference_mode():
        y = module(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(root / "eval.npz", x=x, y=y)
    fp32, int8 = root / "tiny-fp32", root / "tiny-int8"
    compress(CompressRequest(model=model, out=fp32, calib=str(calib), calib_size=16))
    int8_chain = from_flags(int8=Int8Config())
    compress(CompressRequest(model=model, out=int8, chain=int8_chain, calib=str(calib), calib_size=64))
    return TinyPair(fp32=fp32, int8=int8, eval=root / "eval.npz")


def rewrite_manifest(directory: Path, edit: Callable[[dict], None]) -> None:
    """Let EDIT change DIRECTORY's edgekit.json (as a dict, in place), then store the digest of the
    result with edgekit's own function: what anyone can do, since the digest is not a signature."""
    path = Path(directory) / MANIFEST
    data = json.loads(path.read_text())
    edit(data)
    data["manifest_sha256"] = manifest_digest(data)
    path.write_text(json.dumps(data, indent=2) + "\n")
