"""Shared fixtures: an isolated cache, the trained digits CNN, a runner for the real CLI, and the
bf16 skips (from edgekit's own bf16_unsupported(), on the real CPU flags)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hostile import TINY_NET

# 3 epochs reach ~98 % held-out accuracy in ~15 s on 2 cores (the demo's 12 take ~40 s).
DIGITS_EPOCHS = 3
DIGITS_MIN_TOP1 = 0.95


@pytest.fixture(scope="session", autouse=True)
def xdg_cache(tmp_path_factory) -> Path:
    """Every test (and every CLI subprocess it starts) uses a private cache, never the user's."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        yield cache


@dataclass(frozen=True)
class Digits:
    model: Path  # torch.export program (.pt2), dynamic batch, input 1x32x32
    calib: Path  # .npz: x (N, 1, 32, 32) float32, y int64 (the training split)
    test: Path  # .npz: the held-out split
    top1: float  # fp32 accuracy of the model on the held-out split, from torch
    # the model exported by `edgekit export` (an fp32 artifact: model.onnx and its manifest), for the
    # tests where the source format is not under test: from ONNX, compress skips torch (~12 s a run)
    fp32: Path

    @property
    def onnx(self) -> Path:
        return self.fp32 / "model.onnx"


@pytest.fixture(scope="session")
def digits(tmp_path_factory, worker_id) -> Digits:
    """The demo's digits CNN, trained and exported once per session (once for all xdist workers:
    the first does it under a file lock in their shared temporary directory), with its calibration
    and test data."""
    import torch
    from filelock import FileLock

    from edgekit.demo import digits_data, train

    shared = tmp_path_factory.getbasetemp()
    root = (shared.parent if worker_id != "master" else shared) / "digits"
    model, fp32 = root / "digits.pt2", root / "fp32"
    with FileLock(str(root) + ".lock"):
        if not (fp32 / "edgekit.json").is_file():  # export writes it last: all files are there
            root.mkdir(exist_ok=True)
            x_tr, y_tr, x_te, y_te = digits_data()
            np.savez(root / "calib.npz", x=x_tr, y=y_tr)
            np.savez(root / "test.npz", x=x_te, y=y_te)
            train(model, epochs=DIGITS_EPOCHS)
            export = EdgekitCLI()("export", model, "--calib", root / "calib.npz", "-o", fp32, "--force")
            assert export.returncode == 0, export.stderr
        x_te, y_te = (np.load(root / "test.npz")[k] for k in ("x", "y"))
    with torch.inference_mode():
        scores = torch.export.load(str(model)).module()(torch.from_numpy(x_te))
    top1 = float((scores.argmax(1).numpy() == y_te).mean())
    assert top1 >= DIGITS_MIN_TOP1, f"the digits CNN trained to only {top1:.1%} held-out accuracy"
    return Digits(model, root / "calib.npz", root / "test.npz", top1, fp32)


class EdgekitCLI:
    """Runs the real `edgekit` command in a subprocess, as a user would."""

    def __init__(self):
        script = Path(sys.executable).with_name("edgekit")  # the console script of this venv
        self.command = (
            [str(script)]
            if script.is_file()
            else [sys.executable, "-c", "import sys; from edgekit.cli import main; sys.exit(main())"]
        )

    @staticmethod
    def env(**extra: str) -> dict[str, str]:
        # Wide tables, so a fact the user reads is never wrapped across lines in captured output.
        return {**os.environ, "COLUMNS": "250", **extra}

    def argv(self, *args) -> list[str]:
        return [*self.command, *map(str, args)]

    def __call__(self, *args, cwd: Path | None = None, timeout: float = 300, env=None):
        """`edgekit ARGS...` to completion; returns the CompletedProcess (text mode)."""
        return subprocess.run(
            self.argv(*args),
            cwd=cwd,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def edgekit() -> EdgekitCLI:
    return EdgekitCLI()


@pytest.fixture(scope="session")
def bf16_reason() -> str | None:
    """Why this machine cannot compute in bf16 (edgekit's own check: no AVX-512 BF16 / AMX-BF16
    flag, or no OpenVINO), or None where it can. The CPU's real flags: nothing is faked."""
    from edgekit.compress.precision import bf16_unsupported

    return bf16_unsupported()


@pytest.fixture(scope="session")
def needs_bf16(bf16_reason) -> None:
    """Skip, with bf16_unsupported()'s reason, a test that computes in bf16 where the CPU cannot.
    Session-scoped, so it skips before any module fixture builds models for nothing."""
    if bf16_reason:
        pytest.skip(bf16_reason)


@pytest.fixture(scope="session")
def lacks_bf16(bf16_reason) -> str:
    """For a test of the refusal: runs only where bf16 is unsupported, and returns the reason."""
    if bf16_reason is None:
        pytest.skip("this machine computes in bf16; the refusal is tested on one that cannot")
    return bf16_reason


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A folder with the tiny model saved in every format, and `tinynet.py` (for --arch tinynet:net)."""
    import importlib.util

    import torch

    root = tmp_path_factory.mktemp("tiny")
    (root / "tinynet.py").write_text(TINY_NET)
    spec = importlib.util.spec_from_file_location("tinynet", root / "tinynet.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m = mod.net().eval()
    torch.jit.save(torch.jit.script(m), str(root / "model.ts.pt"))
    torch.save(m.state_dict(), root / "weights.pt")
    torch.save(m, root / "pickled.pt")
    return root


@pytest.fixture
def work(tmp_path) -> Path:
    """An empty folder the output goes into, so any leftover in it is visible."""
    d = tmp_path / "work"
    d.mkdir()
    return d


@pytest.fixture
def png():
    """Write a small real grayscale PNG to the given path."""
    from PIL import Image

    def write(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 20), dtype=np.uint8)).save(path)

    return write


@pytest.fixture(scope="session")
def tiny_artifact(tiny, tmp_path_factory, edgekit) -> Path:
    """The tiny TorchScript model exported by `edgekit export`: an fp32 artifact to bench, compare
    and report on."""
    out = tmp_path_factory.mktemp("tiny-artifact") / "fp32"
    r = edgekit("export", tiny / "model.ts.pt", "--input-shape", "1,1,16,16", "-o", out)
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="session")
def depthwise_onnx(tmp_path_factory) -> Path:
    """tests/models.py's depthwise_se block exported to ONNX (dynamic batch, input "x")."""
    from models import depthwise_se

    from edgekit.artifact import InputSpec, TensorSpec
    from edgekit.export.onnx import ExportConfig, export

    module, shapes = depthwise_se()
    spec = InputSpec(inputs=[TensorSpec(name="x", shape=["batch", *shapes[0][1:]])])
    return export(module, spec, tmp_path_factory.mktemp("depthwise"), ExportConfig(), 1)
