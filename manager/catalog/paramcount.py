"""Parameter counts of a backbone spec, without weights: for storage accounting and validation.

A spec is ``timm_name[:key=value,...]``, e.g. ``deit_tiny_patch16_224:img_size=32,depth=2``.
The count comes from the spec's `Arch` (`manager.arch`): shipped for the default backbone and
its kin, else built once by timm on the meta device and cached in the home, so torch and timm
are imported only the first time a home meets a spec.
"""

from __future__ import annotations

from dataclasses import dataclass

from manager.arch import arch
from manager.store.fs import Store

FLOAT32_BYTES = 4


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


def param_info(spec: str, store: Store | None = None) -> ParamInfo:
    """Parameter count of `spec`'s headless backbone; MgrError if timm cannot build it.

    With a ``store``, what timm built is cached in ``<home>/cache/archs/``.
    """
    found = arch(spec, store)
    return ParamInfo(params=found.params, num_features=found.num_features)
