"""The one place a ``--device`` choice becomes a ``torch.device``."""

from __future__ import annotations

import torch

from manager.errors import MgrError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MgrError(f"--device {name}: no CUDA device is available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MgrError(f"unknown device {name!r}; use auto, cpu or cuda") from None
