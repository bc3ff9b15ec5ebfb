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
and a smaller last batch) is timed apart, between device synchronisations, and left out
(``Throughput``).

``fit`` is ``build_optimizer``, ``restore_checkpoint`` when resuming, then per epoch
``train_one_epoch`` and a checkpoint. Progress goes to ``manager.progress.current()`` (a bar per
epoch, a line after it; nothing unless the CLI chose a display) and to the ``progress`` callback.
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
from manager.errors import BadInput, Conflict, Diverged, MgrError, NotFound
from manager.progress import Display, current
from manager.train.config import TrainConfig
from manager.train.data import Batch, ImageTensors, Normalise
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


def _diverged(what: str, epoch: int, step: int, lr: float) -> MgrError:
    return Diverged(
        f"training diverged: {what} at epoch {epoch + 1}, step {step + 1} (peak lr {lr:.3g}); "
        "nothing was recorded",
        hint="try a smaller --lr",
    )


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, lr: float, steps: int
) -> tuple[torch.optim.AdamW, CosineLRScheduler]:
    """AdamW over the model's role groups, and the cosine schedule (per step, linear warm-up
    from ``lr * 1e-3``; ``warmup_epochs`` defaults to a tenth of the epochs)."""
    opt = make_optimizer(param_groups(model, cfg.weight_decay, group_lrs(cfg, lr)), lr)
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
    return opt, sched


@dataclass
class Restored:
    """Where a resumed run picks up: the epochs done, their history, the step's own state."""

    epoch: int = 0
    history: list[dict] = field(default_factory=list)
    step: dict[str, Any] = field(default_factory=dict)


def restore_checkpoint(
    checkpoint: CheckpointIO | None,
    cfg: TrainConfig,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sched: CosineLRScheduler,
) -> Restored:
    """Load an interrupted run's trainable weights, optimizer and schedule into place; refused
    when the checkpoint was made with other settings (its fingerprint differs)."""
    if checkpoint is None:
        raise NotFound("nothing to resume: no checkpoint of an interrupted run of this task")
    ck = checkpoint.load()
    if ck.get("fingerprint") != cfg.fingerprint():
        raise Conflict(
            "the checkpoint was made with other settings (its TrainConfig fingerprint differs)",
            hint="rerun with the same options, or without --resume",
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in ck["trainable"].items():
            params[name].copy_(value)
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    return Restored(int(ck["epoch"]), list(ck["history"]), ck.get("step", {}))


class Throughput:
    """Steady-state images per second of training steps, per epoch and over the run.

    A step whose batch shape is new (the run's first, where kernels are chosen and ``--compile``
    compiles, and a smaller last batch) pays one-time set-up: it is timed apart, between device
    synchronisations, and left out. Other steps are not synchronised (the epoch's end is).
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.shapes: set[tuple[int, ...]] = set()
        self.images, self.seconds = 0, 0.0  # steady, over the epochs finished
        self._n, self._s, self._t0, self._mark = 0, 0.0, 0.0, 0.0

    def start_epoch(self) -> None:
        self._n, self._s = 0, 0.0
        self._t0 = self._mark = time.perf_counter()

    @contextlib.contextmanager
    def step(self, batch: Batch) -> Iterator[None]:
        """Time the block (one training step on ``batch``)."""
        shape = tuple(batch.x.shape)
        if shape in self.shapes:
            yield
            self._n += batch.n
            return
        synchronize(self.device)
        self._s += time.perf_counter() - self._mark
        yield
        synchronize(self.device)
        self._mark = time.perf_counter()
        self.shapes.add(shape)

    def end_epoch(self, count: int) -> float:
        """The epoch's rate (after its last read-back); an epoch of set-up steps only (e.g. one
        step) reports its plain rate, ``count`` images over its whole time."""
        t_end = time.perf_counter()
        self._s += t_end - self._mark
        self.images, self.seconds = self.images + self._n, self.seconds + self._s
        return self._n / self._s if self._n and self._s > 0 else count / (t_end - self._t0)

    def overall(self, epochs: list[dict]) -> float:
        """The run's steady rate; without steady steps, the mean of ``epochs``' own rates."""
        if self.images and self.seconds > 0:
            return self.images / self.seconds
        return statistics.fmean(h["images_per_s"] for h in epochs) if epochs else 0.0


@dataclass
class Loop:
    """What every epoch of one ``fit`` shares."""

    train: ImageTensors  # on the device, uint8
    cfg: TrainConfig
    norm: Normalise
    opt: torch.optim.Optimizer
    sched: CosineLRScheduler
    train_step: TrainStep
    steps: int  # per epoch
    lr: float  # the peak rate, named when training diverges
    meter: Throughput
    ctx: Dist | None = None
    progress: ProgressFn | None = None  # rank 0's only
    display: Display = field(default_factory=Display)  # rank 0's only

    @property
    def rank(self) -> int:
        return self.ctx.rank if self.ctx is not None else 0

    @property
    def world(self) -> int:
        return self.ctx.world if self.ctx is not None else 1

    def diverged(self, what: str, epoch: int, step: int) -> MgrError:
        err = _diverged(what, epoch, step, self.lr)
        return self.ctx.mirror(err) if self.ctx is not None else err


def train_one_epoch(loop: Loop, epoch: int) -> dict[str, float]:
    """Epoch ``epoch`` (0-based), seeded from ``(seed, epoch)``; its history entry. Stops with
    ``Diverged`` on a non-finite loss (read every ``CHECK_EVERY`` steps and at the end) or
    non-finite trainable weights at the end."""
    cfg, rank, world, meter = loop.cfg, loop.rank, loop.world, loop.meter
    torch.manual_seed(_epoch_seed(cfg.seed, epoch) + 7_919 * rank)
    gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
    total = torch.zeros((), dtype=torch.float64, device=loop.train.device)
    count, running, step = 0, float("nan"), 0
    meter.start_epoch()
    batches = loop.train.epoch(cfg.batch_size, loop.norm, generator=gen, rank=rank, world=world)
    with loop.display.epoch(epoch + 1, cfg.epochs, loop.steps, len(loop.train)) as bar:
        for step, batch in enumerate(batches):
            with meter.step(batch):
                loss = loop.train_step(batch, world)
            loop.sched.step_update(epoch * loop.steps + step + 1)
            total += loss.to(torch.float64)
            count += batch.n
            if step % CHECK_EVERY == 0:
                running = _read(total, loop.ctx) / count
                if not math.isfinite(running):
                    raise loop.diverged(f"the loss is {running}", epoch, step)
            lr = loop.opt.param_groups[0]["lr"]
            bar.advance(batch.n, step=step + 1, loss=running)
            if loop.progress:
                loop.progress(StepEvent(epoch + 1, cfg.epochs, step + 1, loop.steps, running, lr))
        loss_value = _read(total, loop.ctx) / count
        images_per_s = meter.end_epoch(count)
    if not math.isfinite(loss_value):
        raise loop.diverged(f"the epoch's loss is {loss_value}", epoch, step)
    trainable = [p for p in loop.train_step.model.parameters() if p.requires_grad]
    if not bool(torch.stack([torch.isfinite(p).all() for p in trainable]).all()):
        raise loop.diverged("the weights hold NaN or infinite values", epoch, step)
    lr = loop.opt.param_groups[0]["lr"]
    return {"epoch": epoch + 1, "loss": loss_value, "lr": lr, "images_per_s": images_per_s}


def epoch_line(entry: dict[str, float], epochs: int) -> str:
    """The one line an epoch leaves (``mgr train`` on stderr): loss, lr, img/s."""
    return (
        f"epoch {entry['epoch']}/{epochs}  loss {entry['loss']:.4f}  "
        f"lr {entry['lr']:.2e}  {entry['images_per_s']:.0f} img/s"
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
    alike; only rank 0 writes checkpoints and reports progress (``progress`` events, and the
    current ``manager.progress`` display: a bar per epoch, a line after each).
    """
    # TrainConfig checks its own settings; ``lr`` is fit's (a NaN one poisons every weight).
    ok = isinstance(lr, int | float) and not isinstance(lr, bool) and math.isfinite(lr)
    if not ok or lr <= 0:
        raise BadInput(f"lr must be a finite number > 0, got {lr!r}")
    if len(train) == 0:
        raise BadInput("the training split is empty")
    device = torch.device(device)
    dtype = resolve_precision(cfg.precision, device)
    main = ctx is None or ctx.rank == 0
    model.to(device).train()
    train = train.to(device)  # once, as uint8
    steps = math.ceil(len(train) / cfg.batch_size)
    opt, sched = build_optimizer(model, cfg, lr, steps)
    done = restore_checkpoint(checkpoint, cfg, model, opt, sched) if resume else Restored()
    train_step = TrainStep(model, opt, dtype=dtype, device=device, compile=cfg.compile, ctx=ctx)
    train_step.load_state_dict(done.step)
    loop = Loop(
        train, cfg, Normalise(mean, std, device), opt, sched, train_step, steps, lr,
        Throughput(device), ctx,
        progress=progress if main else None,
        display=current() if main else Display("off"),
    )  # fmt: skip
    history = done.history
    t_start = time.perf_counter()
    for epoch in range(done.epoch, cfg.epochs):
        history.append(train_one_epoch(loop, epoch))
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
        h = history[-1]
        loop.display.say(epoch_line(h, cfg.epochs))
        if loop.progress:
            loop.progress(EpochEvent(epoch + 1, cfg.epochs, h["loss"], h["lr"], h["images_per_s"]))
    model.eval()
    return FitResult(
        epochs=cfg.epochs,
        final_loss=history[-1]["loss"] if history else float("nan"),
        images_per_s=loop.meter.overall(history[done.epoch :]),
        seconds=time.perf_counter() - t_start,
        history=history,
    )
