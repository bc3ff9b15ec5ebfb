"""Per-epoch resumable checkpoints: trainable tensors, optimizer and scheduler state.

Written through the store (``Store.atomic``: temp file, fsync, rename, confined under the home, so
a linked ``runs/<task>`` cannot send it elsewhere) and read back with ``weights_only=True``: a
checkpoint holds only tensors, numbers and strings, so no pickled code is ever executed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from manager.errors import Corrupt, NotFound
from manager.store.fs import Store


@dataclass(frozen=True)
class Checkpoint:
    """The epoch checkpoint of one task's run, at ``store.checkpoint(task)``."""

    store: Store
    path: Path

    @classmethod
    def of(cls, store: Store, task: str) -> Checkpoint:
        """The task's checkpoint; MgrError if its folder resolves outside the home."""
        return cls(store, store.checkpoint(task))

    def exists(self) -> bool:
        return self.store.confine(self.path).is_file()

    def save(self, state: dict[str, Any]) -> None:
        need = sum(t.numel() * t.element_size() for t in _tensors(state))
        with self.store.atomic(self.path, what="the training checkpoint", need=need) as tmp:
            torch.save(state, tmp)

    def load(self) -> dict[str, Any]:
        path = self.store.confine(self.path)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise NotFound(f"no checkpoint to resume at {path}") from None
        except Exception as e:  # a truncated or foreign file, or one holding pickled objects
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "weights only load failed" in reason.lower():
                reason = "it holds objects other than tensors, numbers and strings (not loaded)"
            raise Corrupt(
                f"cannot read checkpoint {path}: {reason}",
                hint="delete it and train without --resume",
            ) from None

    def remove(self) -> None:
        self.store.unlink(self.path)


def _tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested state (model, optimizer, ...): what torch.save writes."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)
