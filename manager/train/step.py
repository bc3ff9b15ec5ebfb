"""One optimizer step, shared by ``mgr train``'s loop and ``bench/train_speed.py``.

Mixed precision by autocast: the parameters, the optimizer state and the artifact stay float32
(or the artifact's storage dtype); only the forward's matmuls run in bf16 or fp16. fp16 scales
the loss with a GradScaler, which with a fused AdamW (CUDA) checks for overflow on the device
rather than the host. Nothing in a step reads a value back to the host: the caller decides
when to look at the loss.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from manager.errors import BadInput, MgrError
from manager.train.data import IGNORE, Batch
from manager.train.distributed import Dist


def make_optimizer(groups: list[dict], lr: float) -> torch.optim.AdamW:
    """AdamW over ``groups``: the fused kernel when every parameter is on CUDA, else foreach."""
    params = [p for g in groups for p in g["params"]]
    if params and all(p.is_cuda for p in params):
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    return torch.optim.AdamW(groups, lr=lr, foreach=True)


def _first_line(e: BaseException) -> str:
    """The gist of an error: its first line, and the next when the first only introduces it."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return " ".join(lines[:2]) if lines[0].endswith(":") and len(lines) > 1 else lines[0]


class TrainStep:
    """Forward (autocast), loss, backward, optimizer step for one batch.

    ``model`` is the plain module (its parameters are what is checkpointed and exported);
    ``ctx`` wraps it in DDP, ``compile`` compiles that wrapper's forward (the DDP-aware way).
    """

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        *,
        dtype: torch.dtype,
        device: torch.device,
        compile: bool = False,
        ctx: Dist | None = None,
    ):
        self.model, self.opt, self.dtype, self.device = model, opt, dtype, device
        net = ctx.wrap(model, device) if ctx is not None else model
        self._checked = not compile  # the first compiled call is where compilation fails
        if compile:
            try:
                net = torch.compile(net)
            except Exception as e:  # e.g. dynamo unsupported on this Python
                why = _first_line(e)
                raise BadInput(
                    f"compile=True: torch.compile is unavailable: {why}",
                    hint="run without --compile",
                ) from None
        self.net = net
        if dtype == torch.float16 and device.type not in ("cuda", "cpu"):
            raise BadInput(f"precision='fp16' needs a CUDA device or the CPU, not {device.type}")
        self.scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None

    def __call__(self, batch: Batch, world: int = 1) -> torch.Tensor:
        """Train on ``batch``; returns its summed loss (detached, on the device, no sync).

        The loss is this process's sum over its rows times ``world / n``: once DDP averages the
        gradients over ``world`` processes, that is the global batch's mean loss, whatever the
        share of each process (padding rows are ignored).
        """
        if self._checked:
            return self._step(batch, world)
        # Compilation happens in the first forward and backward; inductor's note that a CPU-only
        # machine has no CUDA runtime is not the user's concern.
        cpp_log = logging.getLogger("torch.utils.cpp_extension")
        level = cpp_log.level
        cpp_log.setLevel(logging.ERROR)
        try:
            out = self._step(batch, world)
        except (MgrError, torch.OutOfMemoryError):
            raise
        except Exception as e:
            raise BadInput(
                f"torch.compile failed: {_first_line(e)}", hint="run without --compile"
            ) from None
        finally:
            cpp_log.setLevel(level)
        self._checked = True
        return out

    def _step(self, batch: Batch, world: int) -> torch.Tensor:
        mixed = self.dtype != torch.float32
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=mixed):
            logits = self.net(batch.x)
        # The loss in float32 whatever the forward's precision.
        total = F.cross_entropy(logits.float(), batch.y, reduction="sum", ignore_index=IGNORE)
        loss = total * (world / batch.n)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        return total.detach()

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU): only where a clock is read."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
