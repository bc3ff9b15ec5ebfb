"""The methods' layer math (consolidator, LoRA), their configs and the model surgery.

Names are resolved on first use (PEP 562): ``manager.adapters.config`` (the configs, which the
CLI reads its defaults from) imports without torch.
"""

from __future__ import annotations

from manager.lazy import lazy_exports

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

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
