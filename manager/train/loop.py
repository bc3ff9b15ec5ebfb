"""The training loop shared by every method: AdamW, cosine schedule, per-epoch checkpoints.

Determinism is by construction rather than by saved RNG state: each epoch reseeds the global
generator (DropPath) and the shuffling generator from ``(seed, epoch)``, so a run resumed at
epoch ``e`` replays exactly what an uninterrupted run would have done from ``e`` on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch import nn

from manager.errors import MgrError
from manager.train.checkpoint import load_checkpoint, save_checkpoint
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors

ProgressFn = Callable[[dict], None]


@dataclass
class FitResult:
    epochs: int
    final_loss: float
    images_per_s: float  # training throughput, forward + backward + step
    seconds: float
    history: list[dict] = field(default_factory=list)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norms (1-d tensors), as the recipe says."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def fit(
    model: nn.Module,
    train: ImageTensors,
    cfg: TrainConfig,
    *,
    lr: float,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> FitResult:
    """Train ``model``'s trainable parameters on ``train``; checkpoint after every epoch."""
    if len(train) == 0:
        raise MgrError("the training split is empty")
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=lr)
    steps = math.ceil(len(train) / cfg.batch_size)
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else cfg.epochs // 10
    sched = CosineLRScheduler(
        opt,
        t_initial=max(1, cfg.epochs * steps),
        lr_min=lr * 1e-3,
        warmup_t=warmup * steps,
        warmup_lr_init=lr * 1e-3,
        t_in_epochs=False,
    )
    start, history = 0, []
    if resume:
        if checkpoint is None or not checkpoint.exists():
            raise MgrError("nothing to resume: no checkpoint of an interrupted run of this task")
        ck = load_checkpoint(checkpoint)
        if ck.get("fingerprint") != cfg.fingerprint():
            raise MgrError(
                "the checkpoint was made with other settings; "
                "rerun with the same options, or without --resume"
            )
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in ck["trainable"].items():
                params[name].copy_(value)
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start, history = int(ck["epoch"]), list(ck["history"])

    seen, busy = 0, 0.0
    warm_seen, t_warm = 0, None
    t_start = time.perf_counter()
    loss_value = history[-1]["loss"] if history else float("nan")
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        total, count = 0.0, 0
        t0 = time.perf_counter()
        for step, (x, y) in enumerate(train.batches(cfg.batch_size, mean, std, generator=gen)):
            if epoch == start and step == 1:
                # The run's first step pays one-time kernel set-up (seconds on CPU): keep it
                # out of the throughput figure, which is the steady state's.
                warm_seen, t_warm = count, time.perf_counter()
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step_update(epoch * steps + step + 1)
            total += loss.item() * len(y)
            count += len(y)
            if progress:
                progress(
                    {
                        "kind": "step",
                        "epoch": epoch,
                        "step": step + 1,
                        "steps": steps,
                        "loss": loss.item(),
                        "lr": opt.param_groups[0]["lr"],
                    }
                )
        dt = time.perf_counter() - t0
        if epoch == start and t_warm is not None:
            busy += time.perf_counter() - t_warm
            seen += count - warm_seen
        else:
            busy += dt
            seen += count
        loss_value = total / count
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss_value,
                "lr": opt.param_groups[0]["lr"],
                "images_per_s": count / dt,
            }
        )
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "epoch": epoch + 1,
                    "fingerprint": cfg.fingerprint(),
                    "trainable": trainable_state(model),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "history": history,
                },
            )
        if progress:
            progress({"kind": "epoch", **history[-1], "epochs": cfg.epochs})
    model.eval()
    return FitResult(
        epochs=cfg.epochs,
        final_loss=loss_value,
        images_per_s=seen / busy if busy else 0.0,
        seconds=time.perf_counter() - t_start,
        history=history,
    )
