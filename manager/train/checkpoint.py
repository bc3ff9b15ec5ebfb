"""Per-epoch resumable checkpoints: trainable tensors, optimizer and scheduler state.

Written atomically (temp file + rename) and read back with ``weights_only=True``: a checkpoint
holds only tensors, numbers and strings, so no pickled code is ever executed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from manager.errors import MgrError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MgrError(f"no checkpoint to resume at {path}") from None
    except Exception as e:  # a truncated or foreign file
        raise MgrError(f"cannot read checkpoint {path}: {str(e).splitlines()[0]}") from None
