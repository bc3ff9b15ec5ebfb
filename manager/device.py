"""The one place a ``--device`` choice becomes a ``torch.device``."""

from __future__ import annotations

import torch

from manager.errors import BadInput, MgrError


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BadInput(f"device {name!r}: no CUDA device is available here")
    try:
        return torch.device(name)
    except RuntimeError:
        raise BadInput(f"unknown device {name!r}; use auto, cpu or cuda") from None


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_name(precision: str | None, device: torch.device) -> str:
    """The precision a run computes in: ``None`` means bf16 on CUDA and fp32 elsewhere."""
    if precision is None:
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise MgrError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype:
    """Compute dtype: ``None`` means bf16 on CUDA and fp32 elsewhere; else ``fp32``, ``bf16``
    or ``fp16``. Stored weights keep their own dtype; this is only what a model computes in."""
    return PRECISIONS[precision_name(precision, device)]
