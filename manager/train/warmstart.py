"""``mgr train TASK --init champion|TASK@V|OTHER@V``: start from a recorded version's adapter.

The init version's delta is loaded (size and sha256 checked against the catalog, backbone hash
against the task's) into a freshly prepared model, so that before the first step the model
computes exactly what the init version serves:

* Consolidator branches: the stored values are the *sum* of the branches on their union
  support, so they are split back: branch ``i`` takes what is left of ``dW`` on its own
  support (the first branch all of it where supports overlap). ``sum_i P_i(BD_i) = dW`` holds
  exactly, whatever the overlap.
* LoRA: ``A`` and ``B`` (the stored ``B`` has the scale folded in; it is divided back out).
* Biases, LayerNorms and every other tensor stored whole: copied.
* The head: rows are matched *by class name*. A class the init version knew keeps its row (a
  grown label set keeps its old classes' weights); a new class keeps the fresh head's row.
  When no class matches (another task's classes), the whole head stays fresh.

Refused in one line when the method, the structure (branches or LoRA rank) or the backbone
differs: the adapter would not mean the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from manager.adapters.inject import head_name
from manager.delta.delta import ConsolidatorLayer, Delta
from manager.delta.structure import format_structure, normalize, positions, scatter_union
from manager.errors import BadInput, MgrError


@dataclass(frozen=True)
class InitSource:
    """The version a run starts from: its label (``pets@3``), delta and class names."""

    task: str
    number: int
    delta: Delta
    classes: list[str]

    @property
    def label(self) -> str:
        return f"{self.task}@{self.number}"


@torch.no_grad()
def warm_start(model: nn.Module, source: InitSource, classes: Sequence[str]) -> dict[str, Any]:
    """Load ``source``'s adapter into ``model`` (prepared for the same method); see the module.

    Returns the lineage record: ``{"from", "task", "version", "head", "head_rows_kept"}`` where
    ``head`` is ``kept`` (same classes), ``grown`` (the old classes first, at their indices, new
    ones fresh), ``remapped`` (some classes shared, rows moved by name) or ``reinitialised``
    (no class in common).
    """
    delta = source.delta
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for key, layer in delta.layers.items():
        module = modules.get(key.removesuffix(".weight"))
        if isinstance(layer, ConsolidatorLayer):
            _load_consolidator(module, key, layer, source)
        else:
            _load_lora(module, key, layer, source)
    _check_layers(modules, delta, source)
    head = head_name(model) or ""
    head_keys = {k for k in delta.whole if head and (k == head or k.startswith(head + "."))}
    for key, t in delta.whole.items():
        if key in head_keys:
            continue
        p = params.get(key)
        if p is None or p.shape != t.shape:
            raise BadInput(
                f"init={source.label!r}: its tensor {key} does not fit this model "
                "(another method or structure)"
            )
        p.copy_(t.to(p.dtype))
    shared = [(i, source.classes.index(c)) for i, c in enumerate(classes) if c in source.classes]
    for key in head_keys:
        p, t = params.get(key), delta.whole[key]
        if p is None or p.shape[1:] != t.shape[1:]:
            raise BadInput(f"init={source.label!r}: its head tensor {key} does not fit this model")
        for new_row, old_row in shared:
            if old_row < t.shape[0]:
                p[new_row].copy_(t[old_row].to(p.dtype))
    if not shared:
        state = "reinitialised"
    elif list(classes) == source.classes:
        state = "kept"
    elif list(classes[: len(source.classes)]) == source.classes:
        state = "grown"  # old classes at their old indices, new ones appended
    else:
        state = "remapped"
    return {
        "from": source.label,
        "task": source.task,
        "version": source.number,
        "head": state,
        "head_rows_kept": len(shared),
    }


def _refuse(source: InitSource, what: str) -> MgrError:
    return BadInput(
        f"init={source.label!r}: {what}; warm starts need the same method and structure"
    )


def _load_consolidator(
    module: nn.Module | None, key: str, layer: ConsolidatorLayer, source: InitSource
) -> None:
    branches = getattr(module, "branches", None)
    structure = getattr(module, "structure", None)
    if branches is None or structure is None or "lora" in type(module).__name__.lower():
        raise _refuse(source, f"it is a consolidator adapter, this run's {key} is not")
    mine = normalize((b.g, b.shuffle) for b in structure)
    if mine != normalize(layer.branches) or tuple(layer.shape) != (
        module.out_features,
        module.in_features,
    ):
        raise _refuse(
            source,
            f"{key} has structure g={format_structure(layer.branches)}, this run "
            f"g={format_structure(mine)}",
        )
    residual = scatter_union(layer.values.to(torch.float32), layer.shape, layer.branches)
    flat = residual.view(-1)
    for (g, shuffle), w in zip(mine, branches, strict=True):
        idx = positions(tuple(layer.shape), g, shuffle)
        w.copy_(flat[idx].view(w.shape).to(w.dtype))
        flat[idx] = 0  # overlapping supports: the first branch took this share


def _load_lora(module: nn.Module | None, key: str, layer: Any, source: InitSource) -> None:
    a, b = getattr(layer, "A", None), getattr(layer, "B", None)
    if a is None or b is None or not hasattr(module, "lora_A"):
        raise _refuse(source, f"{key} is a {getattr(layer, 'kind', '?')} layer there")
    if module.lora_A.shape != a.shape or module.lora_B.shape != b.shape:
        raise _refuse(
            source, f"{key} has LoRA rank {a.shape[0]}, this run {module.lora_A.shape[0]}"
        )
    module.lora_A.copy_(a.to(module.lora_A.dtype))
    module.lora_B.copy_((b.to(torch.float32) / module.scale).to(module.lora_B.dtype))


def _check_layers(modules: dict[str, nn.Module], delta: Delta, source: InitSource) -> None:
    """Every adapted layer of this run must be one the init version adapted too."""
    adapted = {
        n
        for n, m in modules.items()
        if hasattr(m, "lora_A") or isinstance(getattr(m, "branches", None), nn.ParameterList)
    }
    extra = sorted(adapted - {k.removesuffix(".weight") for k in delta.layers})
    if extra:
        raise _refuse(source, f"it has no adapter for {extra[0]}")
