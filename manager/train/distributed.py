"""Data-parallel training under ``torchrun``: one process per device, DistributedDataParallel.

``torchrun --nproc-per-node N -m manager train TASK ...`` starts N copies of ``mgr train``;
torchrun sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``. Rank 0 alone checks and reserves the
budget, materialises the backbone, writes checkpoints, the artifact and the catalog row; its
decision to go ahead (or its one-line refusal) is broadcast before any rank trains. ``--batch-size``
is the global batch: each rank takes its share of every batch (see ``ImageTensors.epoch``), so N
processes follow the same schedule, learning rate and result as one (up to the rounding of the
gradient all-reduce). The process group has a timeout (``MGR_DIST_TIMEOUT`` seconds, 600 by
default): a rank that dies mid-run cannot leave the others waiting forever; torchrun stops the
rest at once, and ``mgr train TASK --resume`` continues from the last epoch checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from manager.errors import BadInput, MgrError

DEFAULT_TIMEOUT_S = 600


class PeerError(MgrError):
    """Rank 0's error, raised again on the other ranks; only rank 0 prints it."""


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run."""

    rank: int
    world: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """``model`` under DDP: gradients all-reduced (averaged) across ranks in ``backward``."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # Buffers never change during training (no batch norm in a ViT): synced once at start,
        # not before every forward. Gradients live in the all-reduce buckets (no second copy).
        return DistributedDataParallel(
            model, device_ids=ids, forward_sync_buffers=False, gradient_as_bucket_view=True
        )

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over ranks (a new tensor; a collective: every rank must call)."""
        out = value.clone()
        dist.all_reduce(out)
        return out

    def decide(self, error: str | None, payload: Any = None) -> Any:
        """Rank 0's verdict to every rank: its ``payload``, or its error raised everywhere."""
        box = [(error, payload) if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        error, payload = box[0]
        if error is not None:
            raise MgrError(error) if self.is_main else PeerError(error)
        return payload

    def mirror(self, error: MgrError) -> MgrError:
        """A collective decision's error: every rank stops, rank 0 alone reports it."""
        return error if self.is_main else PeerError(str(error))


def from_env() -> Dist | None:
    """The run's place when launched by torchrun with more than one process, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise MgrError(
            "WORLD_SIZE, RANK and LOCAL_RANK must be integers (torchrun sets them)"
        ) from None
    if world <= 1:
        return None
    if not 0 <= rank < world:
        raise BadInput(f"RANK {rank} is outside WORLD_SIZE {world}")
    return Dist(rank, world, local)


def rank_device(device: torch.device, ctx: Dist | None) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a data-parallel run."""
    if ctx is None or device.type != "cuda":
        return device
    if device.index not in (None, ctx.local_rank):
        raise BadInput(
            f"device {str(device)!r} in a torchrun run: each rank takes cuda:LOCAL_RANK",
            hint="use --device cuda",
        )
    if ctx.local_rank >= torch.cuda.device_count():
        raise MgrError(
            f"LOCAL_RANK {ctx.local_rank} but only {torch.cuda.device_count()} CUDA devices"
        )
    return torch.device("cuda", ctx.local_rank)


def timeout() -> timedelta:
    raw = os.environ.get("MGR_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise BadInput(f"MGR_DIST_TIMEOUT must be a positive number of seconds, got {raw!r}")
    return timedelta(seconds=seconds)


@contextlib.contextmanager
def process_group(ctx: Dist | None, device: torch.device) -> Iterator[None]:
    """Join the run's process group (NCCL on CUDA, gloo on the CPU) for the block's duration."""
    if ctx is None:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, timeout=timeout())
    except (RuntimeError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MgrError(f"cannot join the {backend} process group: {first}") from None
    try:
        yield
    finally:
        dist.destroy_process_group()
