"""Recovery fine-tuning after pruning: knowledge distillation from the unpruned model.

The loss is KL divergence between temperature-softened logits of the pruned (student) and the
unpruned (teacher) model, so unlabelled data works; labels add cross-entropy. A held-out split of
the data stops training early, and the best epoch's weights (the pruned model before any training
counts as epoch 0) are what is kept, so fine-tuning never leaves the model worse on that split.
"""

from __future__ import annotations

import copy
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgekit import batching
from edgekit.data import Samples, check_labels
from edgekit.errors import EdgekitError
from edgekit.progress import progress


class FinetuneConfig(BaseModel):
    """Fine-tune on `data` (image folder, .npz, module:function) for at most `epochs` epochs."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = 1
    data: str
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    batch: int = Field(64, ge=1)
    patience: int = Field(2, ge=1)  # epochs without a better held-out score before stopping
    holdout: float = Field(0.1, gt=0, lt=1)  # fraction of the data held out for early stopping
    temperature: float = Field(4.0, gt=0)
    size: int | None = Field(None, ge=1)  # at most this many samples


def finetune(
    student, teacher, samples: Samples, names: list[str], cfg: FinetuneConfig, fixed: int | None = None
) -> dict:
    """Train `student` in place to match `teacher` on `samples` (in batches of FIXED for a model
    whose batch is fixed, the last padded); return what happened per epoch."""
    import torch

    if len(samples) < 10:
        raise EdgekitError(
            f"--finetune {cfg.data} holds {len(samples)} samples; fine-tuning needs at least 10."
        )
    torch.manual_seed(0)
    order = np.random.default_rng(0).permutation(len(samples))
    n_held = max(1, int(len(samples) * cfg.holdout))
    train, held = samples.take(order[n_held:]), samples.take(order[:n_held])
    t_train, t_held = (_logits(teacher, s, names, fixed, cfg.batch) for s in (train, held))
    check_labels(samples, t_held.numpy())
    steps = cfg.epochs * int(np.ceil(len(train) / (fixed or cfg.batch)))
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    best = _score(student, held, t_held, names, cfg, fixed)
    history = [{"epoch": 0, **best}]
    best_state, best_epoch, waited = copy.deepcopy(student.state_dict()), 0, 0
    with progress() as bar:
        task = bar.add_task("fine-tuning (distillation)", total=steps)
        for epoch in range(1, cfg.epochs + 1):
            student.train()
            order = {"index": torch.randperm(len(train)).numpy()}
            for picked, _ in batching.batches(order, fixed, cfg.batch):
                idx = torch.from_numpy(picked["index"])
                batch = train.take(picked["index"])
                loss = _loss(_forward(student, batch, names), t_train[idx], batch.labels, cfg.temperature)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                bar.advance(task)
            score = _score(student, held, t_held, names, cfg, fixed)
            history.append({"epoch": epoch, **score})
            bar.update(
                task,
                description=f"fine-tuning (distillation), held-out {score['metric']} {score['value']:.3f}",
            )
            if (score["value"], -score["loss"]) > (best["value"], -best["loss"]):
                best, best_state, best_epoch, waited = score, copy.deepcopy(student.state_dict()), epoch, 0
            else:
                waited += 1
                if waited >= cfg.patience:
                    break
    student.load_state_dict(best_state)  # the best epoch's weights, not the last
    student.eval()
    return {
        "train_samples": len(train),
        "held_out_samples": len(held),
        "held_out_metric": best["metric"],
        "held_out_by_epoch": [round(h["value"], 4) for h in history],  # epoch 0: before fine-tuning
        "best_epoch": best_epoch,
    }


def _forward(module, batch: Samples, names: list[str]):
    import torch

    from edgekit.model import flatten_outputs

    return flatten_outputs(module(*[torch.from_numpy(batch.inputs[n]) for n in names]))[0]


def _logits(module, samples: Samples, names: list[str], fixed: int | None, batch: int):
    """The (frozen) teacher's logits, computed once: the data is not augmented."""
    import torch

    def run(feeds):
        return [_forward(module, Samples(feeds, None), names).numpy()]

    module.eval()
    with torch.no_grad():
        return torch.from_numpy(batching.outputs(run, samples.inputs, fixed, batch)[0])


def _loss(student, teacher, labels, temperature: float):
    """KL(teacher ‖ student) on softened logits (scaled by T², as in Hinton et al.), plus
    cross-entropy when there are labels and the output is (N, classes)."""
    import torch
    from torch.nn import functional as F

    s, t = student.reshape(-1, student.shape[-1]), teacher.reshape(-1, teacher.shape[-1])
    loss = F.kl_div(
        F.log_softmax(s / temperature, -1),
        F.log_softmax(t / temperature, -1),
        reduction="batchmean",
        log_target=True,
    ) * (temperature**2)
    if labels is not None and student.ndim == 2:
        loss = loss + F.cross_entropy(student, torch.from_numpy(labels))
    return loss


def _score(student, held: Samples, teacher_logits, names: list[str], cfg: FinetuneConfig, fixed) -> dict:
    """Held-out accuracy (with labels) or top-1 agreement with the teacher, and the loss."""
    import torch

    out = _logits(student, held, names, fixed, cfg.batch)
    with torch.no_grad():
        loss = float(_loss(out, teacher_logits, held.labels, cfg.temperature))
    pred = out.reshape(-1, out.shape[-1]).argmax(-1).numpy()
    if held.labels is not None and out.ndim == 2:
        return {"metric": "accuracy", "value": float(np.mean(pred == held.labels)), "loss": loss}
    agree = pred == teacher_logits.reshape(-1, teacher_logits.shape[-1]).argmax(-1).numpy()
    return {"metric": "agreement", "value": float(np.mean(agree)), "loss": loss}
