"""The methods' layer math (consolidator, LoRA), their configs and the model surgery.

Names are resolved on first use (PEP 562): ``manager.adapters.config`` (the configs, which the
CLI reads its defaults from) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Branch": "manager.adapters.config",
    "ConsolidatorConfig": "manager.adapters.config",
    "ConsolidatorLinear": "manager.adapters.consolidator",
    **dict.fromkeys(
        ("METHOD_GROUPS", "PARAM_GROUPS", "delta_whole_params", "inject", "inject_consolidator",
         "mark_trainable", "target_linears", "unwrap"),
        "manager.adapters.inject",
    ),
}  # fmt: skip

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'manager.adapters' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
