"""The methods one trainer runs: Consolidator and its baselines, each a recipe of two steps.

``prepare`` turns a plain backbone (with the task's head) into the trainable model: it injects the
method's layers and freezes all else. ``export`` turns the trained model into the ``Delta`` the
method must store, so ``mgr storage`` shows every method's true cost on disk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from manager.adapters.fold import consolidate, num_classes_of
from manager.adapters.inject import METHOD_GROUPS, default_groups, inject, select_params
from manager.adapters.lora import LoRALinear
from manager.delta.delta import DTYPES, Delta, DeltaMeta, LoRALayer
from manager.errors import BadInput
from manager.train.config import TrainConfig


@dataclass(frozen=True)
class Method:
    """A method's recipe and its learning-rate defaults (``manager.train.groups`` applies them).

    ``default_lr`` is the base rate (head, biases, full fine-tuning's weights); LayerNorms train
    at ``lr * norm_scale`` and adapter branches at ``lr * branch_scale`` unless set explicitly.
    A scale of None means the method trains no such tensors. ``lr_range`` bounds the search of
    ``mgr train --tune``; ``norm_range`` and ``branch_range``, where set, let it search those
    roles' rates apart from ``lr`` (log-uniform).
    """

    name: str
    summary: str
    default_lr: float
    prepare: Callable[[nn.Module, TrainConfig], None]
    export: Callable[[nn.Module, DeltaMeta], Delta]
    norm_scale: float | None = None
    branch_scale: float | None = None
    lr_range: tuple[float, float] = field(default=(5e-4, 1e-2))
    norm_range: tuple[float, float] | None = None
    branch_range: tuple[float, float] | None = None


default_structure = default_groups  # the name tests and benchmarks know


def _prepare(model: nn.Module, cfg: TrainConfig) -> None:
    """Every method's surgery and freezing, from its config (``manager.adapters.inject``)."""
    inject(model, cfg.adapter)


def _export_consolidator(model: nn.Module, meta: DeltaMeta) -> Delta:
    return consolidate(
        model, backbone_name=meta.backbone, backbone_hash=meta.backbone_hash, dtype=meta.dtype
    )


def _groups_export(name: str) -> Callable[[nn.Module, DeltaMeta], Delta]:
    groups = METHOD_GROUPS[name]

    def export(model: nn.Module, meta: DeltaMeta) -> Delta:
        whole = {
            n: p.detach().to("cpu", meta.dtype).clone()
            for n, p in select_params(model, groups).items()
        }
        return Delta(
            {},
            whole,
            DeltaMeta(name, meta.backbone, meta.backbone_hash, meta.dtype, num_classes_of(model)),
        )

    return export


def _export_lora(model: nn.Module, meta: DeltaMeta) -> Delta:
    layers = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            a = m.lora_A.detach().to("cpu", meta.dtype).clone()
            b = (m.lora_B.detach() * m.scale).to("cpu", meta.dtype)
            layers[f"{name}.weight"] = LoRALayer((m.out_features, m.in_features), a, b)
    whole = {
        n: p.detach().to("cpu", meta.dtype).clone()
        for n, p in select_params(model, ("head",)).items()
    }
    return Delta(
        layers,
        whole,
        DeltaMeta("lora", meta.backbone, meta.backbone_hash, meta.dtype, num_classes_of(model)),
    )


def _method(name: str, summary: str, lr: float, **kwargs: object) -> Method:
    return Method(name, summary, lr, _prepare, _groups_export(name), **kwargs)  # type: ignore[arg-type]


# Learning-rate defaults, from measurements (BENCHMARKS.md, "Learning rates per parameter group"
# and "Consolidator defaults: the ablation", issue 16):
# - Consolidator, per role: head and biases at 1e-2, BitFit's own rate (a Consolidator trains every
#   tensor BitFit trains, so it must not train them slower); LayerNorms at a third of that (at 1e-2
#   they lost one seed in three); branches at 1e-3, a tenth: they start at +-1e-3 (the paper's init,
#   ``ConsolidatorLayer.reset_branches``) and at 1e-2 they swamp that init in a few steps.
# - BitFit+LN: 1e-2 peaked both sweeps (5 and 8 epochs); its norms at a third, as above.
# - Linear probe, BitFit, LoRA: 1e-2, the top of every sweep, stable over three seeds; LoRA diverges
#   at 3e-2.
# - Full fine-tuning: 3e-4 beat 1e-4 on both data sets.
NORM_SCALE = 1 / 3
CONSOLIDATOR_LR = 1e-2
BRANCH_SCALE = 0.1  # Consolidator branches at CONSOLIDATOR_LR / 10 = 1e-3

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "consolidator",
            "grouped-connection branches + biases + LayerNorms + head",
            CONSOLIDATOR_LR,
            _prepare,
            _export_consolidator,
            norm_scale=NORM_SCALE,
            branch_scale=BRANCH_SCALE,
            lr_range=(2e-3, 3e-2),
            norm_range=(3e-4, 1e-2),
            branch_range=(1e-4, 3e-3),
        ),
        _method("linear", "linear probe: the head alone", 1e-2),
        _method("bitfit", "BitFit: the blocks' biases + head", 1e-2),
        _method(
            "bitfit_ln",
            "BitFit with LayerNorms: biases + LayerNorms + head (no branches)",
            1e-2,
            norm_scale=NORM_SCALE,
        ),
        Method(
            "lora",
            "LoRA rank r on qkv/proj/fc1/fc2 (mergeable) + head",
            1e-2,
            _prepare,
            _export_lora,
            branch_scale=1.0,
            lr_range=(1e-3, 2e-2),
        ),
        _method(
            "full", "full fine-tuning: every weight", 3e-4, norm_scale=1.0, lr_range=(3e-5, 1e-3)
        ),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise BadInput(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None


def storage_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise BadInput(f"unknown storage dtype {name!r}; use one of {', '.join(DTYPES)}")
    return DTYPES[name]
