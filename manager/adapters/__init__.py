"""The methods' layer math (consolidator, LoRA) and the model surgery that injects them."""

from manager.adapters.consolidator import Branch, ConsolidatorConfig, ConsolidatorLinear
from manager.adapters.inject import (
    METHOD_GROUPS,
    PARAM_GROUPS,
    delta_whole_params,
    inject_consolidator,
    mark_trainable,
    target_linears,
    unwrap,
)

__all__ = [
    "METHOD_GROUPS",
    "PARAM_GROUPS",
    "Branch",
    "ConsolidatorConfig",
    "ConsolidatorLinear",
    "delta_whole_params",
    "inject_consolidator",
    "mark_trainable",
    "target_linears",
    "unwrap",
]
