"""Checks of a method's settings against a model's real layer widths, before anything is built.

A LoRA rank or a group count is only meaningful relative to the adapted layers' widths; checked
here up front, a bad value is one line in a fraction of a second rather than minutes of training
and gigabytes on disk.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from torch import nn

from manager.adapters.inject import target_modules
from manager.delta.structure import parse_structure
from manager.errors import BadInput


def adapted_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """``{layer name: (out, in)}`` of every layer a method adapts (plain or already wrapped)."""
    return {n: (int(m.out_features), int(m.in_features)) for n, m in target_modules(model)}


def check_lora_rank(model: nn.Module, rank: int) -> None:
    """Raise BadInput unless ``1 <= rank <= min(out, in)`` of every adapted layer.

    Past ``min(out, in)`` the update ``B A`` cannot gain rank: the extra columns only cost memory,
    training time and bytes on disk.
    """
    narrowest = min(min(s) for s in adapted_shapes(model).values())
    if not 1 <= rank <= narrowest:
        raise BadInput(
            f"LoRA rank {rank} does not fit this backbone: its narrowest adapted layer is "
            f"{narrowest} wide, so the rank must be between 1 and {narrowest}"
        )


def check_structure(model: nn.Module, structure: str | Iterable) -> None:
    """Raise BadInput unless every branch's ``g`` divides both widths of every adapted layer."""
    shapes = adapted_shapes(model)
    widths = sorted({d for s in shapes.values() for d in s})
    common = math.gcd(*widths)
    for g, _ in parse_structure(structure):
        if common % g:
            fits = [d for d in (common // 2, common // 4, common) if d >= 1 and common % d == 0]
            hint = ", ".join(str(d) for d in dict.fromkeys(fits))
            raise BadInput(
                f"g={g} groups do not fit this backbone: g must divide every adapted layer width "
                f"({', '.join(map(str, widths))}), i.e. divide {common} (e.g. {hint})"
            )


def check_config(model: nn.Module, config: Any) -> None:
    """Raise BadInput unless ``config`` (a method's config) fits ``model``'s layer widths."""
    from manager.adapters.config import ConsolidatorConfig, LoraConfig

    if isinstance(config, ConsolidatorConfig):
        check_structure(model, config.for_model(model).branches)  # type: ignore[arg-type]
    elif isinstance(config, LoraConfig):
        check_lora_rank(model, config.rank)
