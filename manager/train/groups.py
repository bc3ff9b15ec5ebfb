"""Optimizer parameter groups by role, each role with its own learning rate.

Every trainable tensor has one role:

- ``branches``: the adapter's added weights (Consolidator branches, LoRA A and B): ``lr_branch``;
- ``norms``: every LayerNorm's weight and bias, at ``lr_norm``;
- ``head``: the classifier's weight, at ``lr``;
- ``biases``: every other 1-d tensor (the head's bias included), at ``lr``;
- ``weights``: every other tensor (the backbone's own, under full fine-tuning), at ``lr``.

Weight decay applies only to tensors of more than one dimension (never biases and norms), as the
recipe says. LayerNorms get a rate of their own because they are what breaks first: at 1e-2 every
method that tunes them lost a seed in three on Flowers-102, while BitFit without them did not
(BENCHMARKS.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from torch import nn

from manager.adapters.inject import branch_params, head_params, norm_params
from manager.adapters.lora import LoRALinear
from manager.errors import BadInput
from manager.train.config import TrainConfig
from manager.train.methods import Method, get_method

ROLES = ("head", "biases", "weights", "branches", "norms")  # group 0 carries the base lr


@dataclass(frozen=True)
class GroupLRs:
    """The peak learning rate of each role (see the module docstring)."""

    lr: float
    lr_norm: float
    lr_branch: float

    def of(self, role: str) -> float:
        return {"norms": self.lr_norm, "branches": self.lr_branch}.get(role, self.lr)


def resolve_lrs(cfg: TrainConfig, method: Method | None = None) -> TrainConfig:
    """``cfg`` with ``lr``, ``lr_norm`` and ``lr_branch`` filled in from the method's defaults.

    A rate left None is the method's: ``lr`` its default, the others ``lr`` times its scale; a
    role the method does not train stays None, so the recorded settings say what was used.
    """
    method = method or get_method(cfg.method)
    lr = cfg.lr if cfg.lr is not None else method.default_lr

    def derive(value: float | None, scale: float | None) -> float | None:
        if scale is None:
            return None
        return value if value is not None else lr * scale

    out = dataclasses.replace(
        cfg,
        lr=lr,
        lr_norm=derive(cfg.lr_norm, method.norm_scale),
        lr_branch=derive(cfg.lr_branch, method.branch_scale),
    )
    for name in ("lr", "lr_norm", "lr_branch"):
        value = getattr(out, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise BadInput(f"{name} must be a finite number > 0, got {value}")
    return out


def group_lrs(cfg: TrainConfig, lr: float) -> GroupLRs:
    """Each role's rate for a run whose base rate is ``lr``."""
    r = resolve_lrs(dataclasses.replace(cfg, lr=lr))
    assert r.lr is not None
    return GroupLRs(r.lr, r.lr_norm or r.lr, r.lr_branch or r.lr)


def _branch_ids(model: nn.Module) -> set[int]:
    ids = {id(p) for p in branch_params(model).values()}
    for m in model.modules():
        if isinstance(m, LoRALinear):
            ids |= {id(m.lora_A), id(m.lora_B)}
    return ids


def roles(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """The trainable parameters of ``model`` by role, as ``(name, parameter)`` in model order."""
    branches = _branch_ids(model)
    norms = {id(p) for p in norm_params(model).values()}
    head = {id(p) for p in head_params(model).values()}
    out: dict[str, list[tuple[str, nn.Parameter]]] = {r: [] for r in ROLES}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in norms:
            role = "norms"
        elif p.ndim <= 1:
            role = "biases"
        elif id(p) in branches:
            role = "branches"
        elif id(p) in head:
            role = "head"
        else:
            role = "weights"
        out[role].append((name, p))
    return out


def param_groups(model: nn.Module, weight_decay: float, lrs: GroupLRs | None = None) -> list[dict]:
    """AdamW groups, one per non-empty role, named by it; decay only on >1-d tensors.

    Without ``lrs`` the groups carry no rate of their own (the optimizer's ``lr`` applies).
    """
    groups = []
    for role, named in roles(model).items():
        if not named:
            continue
        params = [p for _, p in named]
        group = {
            "name": role,
            "params": params,
            "weight_decay": weight_decay if params[0].ndim > 1 else 0.0,
        }
        if lrs is not None:
            group["lr"] = lrs.of(role)
        groups.append(group)
    return groups
