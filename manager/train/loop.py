"""The training loop shared by every method: AdamW, cosine schedule, per-epoch checkpoints.

Determinism is by construction rather than by saved RNG state: each epoch reseeds the global
generator (DropPath; one stream per rank) and the shuffling generator from ``(seed, epoch)``, so a
run resumed at epoch ``e`` replays exactly what an uninterrupted run would have done from ``e`` on.

The split lives on the device as uint8 and is normalised there per batch; the step (autocast
precision, fused AdamW on CUDA, optional torch.compile, DDP under torchrun) is
``manager.train.step.TrainStep``. The loss is summed on the device and read back only every
``CHECK_EVERY`` steps and at the end of each epoch (no host sync per step): at those points a
non-finite loss, or non-finite trainable weights at an epoch's end, stop the run with a clear
error before a checkpoint is written.

Throughput (``EpochEvent.images_per_s``, ``FitResult.images_per_s``) is the steady state's: a step
whose batch shape is new (the run's first, where kernels are chosen and ``--compile`` compiles,
and a smaller last batch) is timed apart, between device synchronisations, and left out.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn

from manager.device import resolve_precision
from manager.errors import Diverged, MgrError
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors, Normalise
from manager.train.distributed import Dist
from manager.train.groups import group_lrs, param_groups
from manager.train.step import TrainStep, make_optimizer, synchronize

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
    images_per_s: float  # steady-state training throughput, forward + backward + step
    seconds: float
    history: list[dict] = field(default_factory=list)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _read(total: torch.Tensor, ctx: Dist | None) -> float:
    """The value summed over every rank, on the host (a sync; every rank calls it alike)."""
    return (ctx.all_sum(total) if ctx is not None else total).item()


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
    return Diverged(
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
    ctx: Dist | None = None,
) -> FitResult:
    """Train ``model``'s trainable parameters on ``train``; checkpoint after every epoch.

    ``ctx``: this process's rank in a torchrun run (None: one process). Every rank calls ``fit``
    alike; only rank 0 writes checkpoints and reports progress.
    """
    check_settings(cfg, lr)
    if len(train) == 0:
        raise MgrError("the training split is empty")
    device = torch.device(device)
    dtype = resolve_precision(cfg.precision, device)
    rank, world = (ctx.rank, ctx.world) if ctx is not None else (0, 1)
    main = rank == 0
    model.to(device).train()
    train = train.to(device)  # once, as uint8
    norm = Normalise(mean, std, device)
    opt = make_optimizer(param_groups(model, cfg.weight_decay, group_lrs(cfg, lr)), lr)
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
    start, history, step_state = 0, [], {}
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
        step_state = ck.get("step", {})
    train_step = TrainStep(model, opt, dtype=dtype, device=device, compile=cfg.compile, ctx=ctx)
    train_step.load_state_dict(step_state)
    progress = progress if main else None

    def diverged(what: str, epoch: int, step: int) -> MgrError:
        err = _diverged(what, epoch, step, lr)
        return ctx.mirror(err) if ctx is not None else err

    trainable = [p for p in model.parameters() if p.requires_grad]
    shapes: set[tuple[int, ...]] = set()
    steady_n, steady_s = 0, 0.0
    t_start = time.perf_counter()
    loss_value = history[-1]["loss"] if history else float("nan")
    for epoch in range(start, cfg.epochs):
        torch.manual_seed(_epoch_seed(cfg.seed, epoch) + 7_919 * rank)
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        total = torch.zeros((), dtype=torch.float64, device=device)
        count, running, step = 0, float("nan"), 0
        ep_n, ep_s = 0, 0.0
        t0 = t_mark = time.perf_counter()
        batches = train.epoch(cfg.batch_size, norm, generator=gen, rank=rank, world=world)
        for step, batch in enumerate(batches):
            if tuple(batch.x.shape) in shapes:
                loss = train_step(batch, world)
                ep_n += batch.n
            else:  # a new shape pays one-time set-up: time it apart, leave it out
                synchronize(device)
                ep_s += time.perf_counter() - t_mark
                loss = train_step(batch, world)
                synchronize(device)
                t_mark = time.perf_counter()
                shapes.add(tuple(batch.x.shape))
            sched.step_update(epoch * steps + step + 1)
            total += loss.to(torch.float64)
            count += batch.n
            if step % CHECK_EVERY == 0:
                running = _read(total, ctx) / count
                if not math.isfinite(running):
                    raise diverged(f"the loss is {running}", epoch, step)
            if progress:
                progress(
                    StepEvent(
                        epoch + 1, cfg.epochs, step + 1, steps, running, opt.param_groups[0]["lr"]
                    )
                )
        loss_value = _read(total, ctx) / count
        t_end = time.perf_counter()
        ep_s += t_end - t_mark
        if not math.isfinite(loss_value):
            raise diverged(f"the epoch's loss is {loss_value}", epoch, step)
        if not bool(torch.stack([torch.isfinite(p).all() for p in trainable]).all()):
            raise diverged("the weights hold NaN or infinite values", epoch, step)
        steady_n, steady_s = steady_n + ep_n, steady_s + ep_s
        history.append(
            {
                "epoch": epoch + 1,
                "loss": loss_value,
                "lr": opt.param_groups[0]["lr"],
                # An epoch of set-up steps only (e.g. one step) reports its plain rate.
                "images_per_s": ep_n / ep_s if ep_n and ep_s > 0 else count / (t_end - t0),
            }
        )
        if checkpoint is not None and main:
            checkpoint.save(
                {
                    "epoch": epoch + 1,
                    "fingerprint": cfg.fingerprint(),
                    "trainable": trainable_state(model),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "step": train_step.state_dict(),
                    "history": history,
                }
            )
        if progress:
            h = history[-1]
            progress(EpochEvent(epoch + 1, cfg.epochs, h["loss"], h["lr"], h["images_per_s"]))
    model.eval()
    seconds = time.perf_counter() - t_start
    if steady_n and steady_s > 0:
        images_per_s = steady_n / steady_s
    else:
        done = history[start:]
        images_per_s = statistics.fmean(h["images_per_s"] for h in done) if done else 0.0
    return FitResult(
        epochs=cfg.epochs,
        final_loss=loss_value,
        images_per_s=images_per_s,
        seconds=seconds,
        history=history,
    )
