"""The training loop shared by every method: AdamW, cosine schedule, per-epoch checkpoints.

Determinism is by construction rather than by saved RNG state: each epoch reseeds the global
generator (DropPath) and the shuffling generator from ``(seed, epoch)``, so a run resumed at
epoch ``e`` replays exactly what an uninterrupted run would have done from ``e`` on.

The loss is summed on the device and read back only every ``CHECK_EVERY`` steps and at the end of
each epoch (no host sync per step): at those points a non-finite loss, or non-finite trainable
weights at an epoch's end, stop the run with a clear error before a checkpoint is written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler
from torch import nn

from manager.errors import MgrError
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors
from manager.train.groups import group_lrs, param_groups

CHECK_EVERY = 20  # steps between reads of the running loss (each one is a host sync)


@dataclass(frozen=True)
class StepEvent:
    """After each optimizer step. ``loss``: the epoch's mean loss as of the last check."""

    epoch: int  # 1-based
    epochs: int
    step: int  # 1-based
    steps: int
    loss: float
    lr: float


@dataclass(frozen=True)
class EpochEvent:
    """After each epoch (and its checkpoint)."""

    epoch: int  # 1-based
    epochs: int
    loss: float
    lr: float
    images_per_s: float


ProgressFn = Callable[[StepEvent | EpochEvent], None]


class CheckpointIO(Protocol):
    """Where ``fit`` keeps its epoch checkpoints (``manager.train.checkpoint.Checkpoint``)."""

    def save(self, state: dict[str, Any]) -> None: ...
    def load(self) -> dict[str, Any]: ...


@dataclass
class FitResult:
    epochs: int
    final_loss: float
    images_per_s: float  # training throughput, forward + backward + step
    seconds: float
    history: list[dict] = field(default_factory=list)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def check_settings(cfg: TrainConfig, lr: float) -> None:
    """Refuse rates the optimizer cannot use: a NaN or infinite one poisons every weight."""
    if not (math.isfinite(lr) and lr > 0):
        raise MgrError(f"the learning rate must be a positive finite number, got {lr}")
    if not (math.isfinite(cfg.weight_decay) and cfg.weight_decay >= 0):
        raise MgrError(f"the weight decay must be a finite number >= 0, got {cfg.weight_decay}")


def _diverged(what: str, epoch: int, step: int, lr: float) -> MgrError:
    return MgrError(
        f"training diverged: {what} at epoch {epoch + 1}, step {step + 1} (peak lr {lr:.3g}); "
        "nothing was recorded; try a smaller --lr"
    )


def fit(
    model: nn.Module,
    train: ImageTensors,
    cfg: TrainConfig,
    *,
    lr: float,
    mean: torch.Tensor,
    std: torch.Tensor,
    device: torch.device | str = "cpu",
    checkpoint: CheckpointIO | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> FitResult:
    """Train ``model``'s trainable parameters on ``train``; checkpoint after every epoch."""
    check_settings(cfg, lr)
    if len(train) == 0:
        raise MgrError("the training split is empty")
    model.to(device).train()
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay, group_lrs(cfg, lr)), lr=lr)
    steps = math.ceil(len(train) / cfg.batch_size)
    warmup = cfg.warmup_epochs if cfg.warmup_epochs is not None else cfg.epochs // 10
    with _quiet("timm.scheduler.cosine_lr"):  # a one-step run has nothing to anneal: no warning
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
        if checkpoint is None:
            raise MgrError("nothing to resume: no checkpoint of an interrupted run of this task")
        ck = checkpoint.load()
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

    trainable = [p for p in model.parameters() if p.requires_grad]
    seen, busy = 0, 0.0
    warm_seen, t_warm = 0, None
    t_start = time.perf_counter()
    loss_value = history[-1]["loss"] if history else float("nan")
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        total = torch.zeros((), dtype=torch.float64, device=device)
        count, running, step = 0, float("nan"), 0
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
            total += loss.detach().to(torch.float64) * len(y)
            count += len(y)
            if step % CHECK_EVERY == 0:
                running = total.item() / count
                if not math.isfinite(running):
                    raise _diverged(f"the loss is {running}", epoch, step, lr)
            if progress:
                progress(
                    StepEvent(
                        epoch + 1, cfg.epochs, step + 1, steps, running, opt.param_groups[0]["lr"]
                    )
                )
        loss_value = total.item() / count
        if not math.isfinite(loss_value):
            raise _diverged(f"the epoch's loss is {loss_value}", epoch, step, lr)
        if not bool(torch.stack([torch.isfinite(p).all() for p in trainable]).all()):
            raise _diverged("the weights hold NaN or infinite values", epoch, step, lr)
        dt = time.perf_counter() - t0
        if epoch == start and t_warm is not None:
            busy += time.perf_counter() - t_warm
            seen += count - warm_seen
        else:
            busy += dt
            seen += count
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss_value,
                "lr": opt.param_groups[0]["lr"],
                "images_per_s": count / dt,
            }
        )
        if checkpoint is not None:
            checkpoint.save(
                {
                    "epoch": epoch + 1,
                    "fingerprint": cfg.fingerprint(),
                    "trainable": trainable_state(model),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "history": history,
                }
            )
        if progress:
            h = history[-1]
            progress(EpochEvent(epoch + 1, cfg.epochs, h["loss"], h["lr"], h["images_per_s"]))
    model.eval()
    return FitResult(
        epochs=cfg.epochs,
        final_loss=loss_value,
        images_per_s=seen / busy if busy else 0.0,
        seconds=time.perf_counter() - t_start,
        history=history,
    )
