"""One config per method, each checking itself on construction (PEFT's ``LoraConfig`` and kin).

A config holds what shapes the adapter (branches, rank, which tensors train), never optimisation
settings (those are the trainer's). A value that can never work is refused in ``__post_init__``
with one ``BadInput`` line; what depends on the model (a ``g`` that must divide the layer widths, a
rank up to the narrowest layer) is checked by ``adapt`` against the real model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from manager.adapters.consolidator import Branch, ConsolidatorConfig
from manager.adapters.inject import TARGETS
from manager.errors import BadInput


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (Hu et al., 2021) of rank ``rank`` on ``target_modules`` of every block.

    ``alpha`` defaults to the rank (a scale of 1, as ``mgr train --method lora``); the update is
    ``alpha / rank * B A``. ``target_modules``: names inside a block, among ``TARGETS``.
    """

    rank: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] = TARGETS

    method = "lora"

    def __post_init__(self) -> None:
        r = self.rank
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise BadInput(f"LoRA rank must be a positive integer, got {r!r}")
        alpha = float(r) if self.alpha is None else self.alpha
        if (
            isinstance(alpha, bool)
            or not isinstance(alpha, int | float)
            or not (math.isfinite(alpha) and alpha > 0)
        ):
            raise BadInput(f"LoRA alpha must be a positive finite number, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))
        targets = self.target_modules
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise BadInput(
                f"LoRA target_modules must be a non-empty subset of {', '.join(TARGETS)}; "
                f"got {', '.join(map(repr, unknown or targets)) or 'none'}"
            )
        object.__setattr__(self, "target_modules", tuple(dict.fromkeys(targets)))

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank  # type: ignore[arg-type]


@dataclass(frozen=True)
class BitFitConfig:
    """BitFit (Ben Zaken et al., 2022): the blocks' biases and the head train, nothing else;
    ``with_norms`` adds every LayerNorm (``mgr train --method bitfit_ln``)."""

    with_norms: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.with_norms, bool):
            raise BadInput(f"BitFit with_norms must be True or False, got {self.with_norms!r}")

    @property
    def method(self) -> str:
        return "bitfit_ln" if self.with_norms else "bitfit"


AdapterConfig = ConsolidatorConfig | LoraConfig | BitFitConfig

__all__ = ["AdapterConfig", "BitFitConfig", "Branch", "ConsolidatorConfig", "LoraConfig"]
