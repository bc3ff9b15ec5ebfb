"""The consolidated delta: structure (supports as views), the file format, stage 1 and stage 2."""

from manager.delta.apply import SupportCache, apply, check_compatible, restore, switch
from manager.delta.consolidate import consolidate
from manager.delta.delta import (
    FORMAT_VERSION,
    ConsolidatorLayer,
    Delta,
    DeltaMeta,
    DenseLayer,
    LoRALayer,
)
from manager.delta.sizing import (
    finest_fitting,
    projected_bytes,
    projected_tensor_bytes,
    single_branch_candidates,
)
from manager.delta.structure import stored_bytes, support_numel

__all__ = [
    "FORMAT_VERSION",
    "ConsolidatorLayer",
    "Delta",
    "DeltaMeta",
    "DenseLayer",
    "LoRALayer",
    "SupportCache",
    "apply",
    "check_compatible",
    "consolidate",
    "finest_fitting",
    "projected_bytes",
    "projected_tensor_bytes",
    "restore",
    "single_branch_candidates",
    "stored_bytes",
    "support_numel",
    "switch",
]
