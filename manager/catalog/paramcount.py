"""Parameter counts of a backbone spec, without weights: for storage accounting and validation.

A spec is ``timm_name[:key=value,...]``, e.g. ``deit_tiny_patch16_224:img_size=32,depth=2``.
Counting builds the model on PyTorch's meta device (no memory, no init cost) and caches the
result in ``<home>/cache/param_counts.json``, so torch and timm are imported only on a miss.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from manager.errors import MgrError
from manager.specs import split_spec
from manager.store.fs import Store

FLOAT32_BYTES = 4
_CACHE_FILE = "param_counts.json"


@dataclass(frozen=True)
class ParamInfo:
    """Parameters of the headless backbone and the width of its features."""

    params: int
    num_features: int

    @property
    def bytes(self) -> int:
        """float32 bytes of the backbone's parameters."""
        return self.params * FLOAT32_BYTES

    def head_bytes(self, num_classes: int) -> int:
        """float32 bytes of a linear head for `num_classes` on the backbone's features."""
        return num_classes * (self.num_features + 1) * FLOAT32_BYTES


# The default backbone and its kin, counted once by timm (tests/test_catalog_imports.py checks
# them against timm): ``mgr task add`` does not count the default, so without this the first
# ``mgr storage`` of a home would import torch and timm to do it.
KNOWN: dict[str, ParamInfo] = {
    "vit_base_patch16_224": ParamInfo(85_798_656, 768),
    "vit_large_patch16_224": ParamInfo(303_301_632, 1024),
    "deit_small_patch16_224": ParamInfo(21_665_664, 384),
    "deit_tiny_patch16_224": ParamInfo(5_524_416, 192),
}


def _count(spec: str) -> ParamInfo:
    import timm  # slow to import: only here, on a cache miss
    import torch

    name, kwargs = split_spec(spec)
    kwargs.pop("num_classes", None)
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
    except Exception as exc:  # timm raises RuntimeError/TypeError/ValueError/... for bad specs
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MgrError(f"backbone {spec!r} cannot be built by timm: {msg}") from exc
    params = sum(p.numel() for p in model.parameters())
    return ParamInfo(params=int(params), num_features=int(getattr(model, "num_features", 0)))


def param_info(spec: str, store: Store | None = None) -> ParamInfo:
    """Parameter count of `spec`'s headless backbone; MgrError if timm cannot build it.

    With a ``store``, counts are cached in ``<home>/cache/param_counts.json``.
    """
    if spec in KNOWN:
        return KNOWN[spec]
    cache_file = store.cache / _CACHE_FILE if store is not None else None
    cache: dict[str, Any] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}  # a damaged cache is only a cache
        if spec in cache:
            return ParamInfo(**cache[spec])
    info = _count(spec)
    if cache_file is not None:
        cache[spec] = asdict(info)
        store.write_bytes(cache_file, json.dumps(cache, indent=1, sort_keys=True).encode())
    return info
