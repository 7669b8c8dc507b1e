"""`edgekit demo`: a ResNet-style CNN trained on scikit-learn's digits, exported, quantized to
INT8 and benchmarked on ONNX Runtime, end to end, with one table of the results.

The digits (8×8, real and labelled, shipped with scikit-learn) are upsampled to 32×32; a
stratified 20 % split is held out for evaluation. The trained model is cached.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekit import interrupts
from edgekit.benchmarks.report import console, mb, pct

SIZE = 32


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "edgekit" / "demo"


class BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv+BN, residual add, 1×1 conv+BN downsample when needed."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.downsample(x))


def digits_net() -> nn.Module:
    """The demo architecture: a small ResNet (stem, 3 stages of basic blocks, linear head)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, 1, 1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        BasicBlock(32, 32, 1),
        BasicBlock(32, 64, 2),
        BasicBlock(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


def digits_data(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): digits upsampled to 1×32×32, scaled to [-1, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = (x.numpy() - 0.5) / 0.5
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, d.target.astype(np.int64), test_size=0.2, random_state=seed, stratify=d.target
    )
    return x_tr, y_tr, x_te, y_te


def train(path: Path, epochs: int = 12, seed: int = 0) -> None:
    """Train the demo CNN and save it as a torch.export program (shape recorded in the file)."""
    from edgekit.progress import progress

    torch.manual_seed(seed)
    x_tr, y_tr, _, _ = digits_data(seed)
    model = digits_net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x_tr) / 64))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    gen = torch.Generator().manual_seed(seed)
    with progress() as bar:
        task = bar.add_task("training the digits CNN", total=steps)
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(xt), generator=gen).split(64):
                shift = torch.randint(-2, 3, (2,), generator=gen).tolist()  # small translations
                xb = torch.roll(xt[idx], shifts=shift, dims=(2, 3))
                loss = torch.nn.functional.cross_entropy(model(xb), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.advance(task)
    model.eval()
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, (torch.zeros(2, 1, SIZE, SIZE),), dynamic_shapes=({0: batch},))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.pt2")
    try:
        torch.export.save(ep, str(tmp))
        interrupts.check()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run(work_dir: Path | None, retrain: bool) -> list[dict]:
    from edgekit.artifact import read_manifest
    from edgekit.benchmarks.runner import BenchConfig, interleaved, reference_outputs
    from edgekit.compress.quantize import Int8Config
    from edgekit.data import Preprocess, load_samples
    from edgekit.passes import Step
    from edgekit.pipeline import CompressRequest, compress

    cache = cache_dir()
    work = Path(work_dir) if work_dir else cache / "artifacts"
    model = cache / "digits_cnn.pt2"
    t0 = time.perf_counter()
    if retrain or not model.exists():
        console.print("[bold]1/4[/bold] training a ResNet-style CNN on scikit-learn's digits …")
        train(model)
    else:
        console.print(f"[bold]1/4[/bold] using the cached digits CNN {model}")
    x_tr, y_tr, x_te, y_te = digits_data()
    calib, test = cache / "calib.npz", cache / "test.npz"
    np.savez(calib, x=x_tr, y=y_tr)
    np.savez(test, x=x_te, y=y_te)
    console.print("[bold]2/4[/bold] exporting to ONNX (verified against torch) …")
    fp32 = work / "digits-fp32"
    compress(CompressRequest(model=model, out=fp32, calib=str(calib), force=True))
    console.print("[bold]3/4[/bold] quantizing to INT8 (static, QDQ, per-channel) …")
    int8 = work / "digits-int8"
    compress(
        CompressRequest(
            model=model,
            out=int8,
            chain=[Step("int8", Int8Config())],
            calib=str(calib),
            eval=str(test),
            force=True,
        )
    )
    console.print("[bold]4/4[/bold] benchmarking both on ONNX Runtime, interleaved …")
    evals = load_samples(str(test), read_manifest(fp32).input_spec, None, Preprocess(), what="eval")
    cfg = BenchConfig(seconds=4.0)
    reference = reference_outputs(fp32, evals)
    records = interleaved([(fp32, cfg), (int8, cfg)], count=4, evals=evals, reference=reference)
    _table(records, time.perf_counter() - t0)
    made = read_manifest(int8).target_cpu
    console.print(
        f"INT8 form {made['form']}, made for {made['class']} ({made['from']}; "
        f"{'u8 x s8 can saturate there' if made['u8s8_saturates'] else 'u8 x s8 cannot saturate there'}); "
        "another CPU: EDGEKIT_TARGET_CPU=CLASS edgekit demo."
    )
    return records


def _table(records: list[dict], seconds: float) -> None:
    from rich.table import Table

    t = Table(title="edgekit demo: digits CNN (1×32×32), ONNX Runtime, CPU", title_justify="left")
    for col in ("model", "top-1 accuracy", "drop", "median latency", "speed-up", "size"):
        t.add_column(col, justify="left" if col == "model" else "right")
    base = records[0]
    for name, r in zip(("fp32", "int8"), records, strict=True):
        if not r.get("ok"):
            t.add_row(name, f"[red]failed: {r.get('error')}[/red]", "", "", "", "")
            continue
        top1 = r["accuracy"]["top1"]
        drop = 100 * (base["accuracy"]["top1"] - top1)
        speed = r.get("speedup_vs_first", {}).get("median", 1.0)
        t.add_row(
            name,
            pct(top1),
            "—" if r is base else f"{drop:.2f} pts",
            f"{r['latency']['median_ms']:.3f} ms",
            f"{speed:.2f}×",
            mb(r["size_bytes"]) + ("" if r is base else f" ({r['size_bytes'] / base['size_bytes']:.0%})"),
        )
    console.print(t)
    console.print(
        f"accuracy on {records[0]['accuracy']['samples']} held-out digits; latency: median of "
        f"interleaved rounds, batch 1; done in {seconds:.0f} s. Artifacts: "
        f"{Path(records[1]['artifact']).parent}"
    )
