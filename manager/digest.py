"""The content hash of a set of named tensors: what identifies a backbone's weights (W0)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import torch


def tensors_digest(names: Iterable[str], get: Callable[[str], torch.Tensor]) -> str:
    """sha256 hex over the names, dtypes, shapes and bytes of ``get(name)``, in name order.

    ``get`` is called once per name, so a caller can read tensors one at a time from a file.
    The same weights give the same hash whichever file format or device they came from.
    """
    h = hashlib.sha256()
    for name in sorted(names):
        t = get(name).detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
