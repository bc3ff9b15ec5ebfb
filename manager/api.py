"""The Python API: adapt a timm ViT, train it on your own data, consolidate it, merge it.

Everything here is a thin layer over what the CLI runs (``adapters/`` for the surgery,
``train/`` for the method's export and learning rates, ``delta/`` for the format)::

    from manager import ConsolidatorConfig, adapt, train_adapter, consolidate, Delta
    adapt(model, ConsolidatorConfig(branches="96"))   # inject + freeze, in place
    train_adapter(model, loader, epochs=3)             # your DataLoader of (images, labels)
    delta = consolidate(model)                         # -> Delta (the bytes mgr stores)
    delta.apply_to(plain_model)                        # merged: a plain timm model again

``open_home`` opens a manager home (the CLI's catalog and files) for reading it from Python, and
``Switcher`` (``manager.switch.switcher``) serves its tasks from one backbone in memory.
This module sits above every layer (it may import any of them); ``import manager`` reaches it
lazily, so importing the package alone stays free of torch.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from manager.adapters.config import (
    CONFIG_TYPES,
    AdapterConfig,
    BitFitConfig,
    ConsolidatorConfig,
    FullConfig,
    LinearProbeConfig,
    LoraConfig,
)
from manager.adapters.inject import consolidator_layers, inject
from manager.adapters.lora import LoRALinear
from manager.adapters.validate import check_config
from manager.delta.delta import Delta, DeltaMeta, dtype_name
from manager.errors import BadInput, Diverged
from manager.home import Home
from manager.switch.switcher import Switcher

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from manager.catalog import Catalog
    from manager.store.fs import Store


@dataclass(frozen=True)
class _Adapted:
    """What ``adapt`` learnt of a model before changing it (W0's identity, the method)."""

    method: str
    backbone: str
    backbone_hash: str


# Keyed by the model object, not stored on it: the model's attributes and state dict stay timm's.
_ADAPTED: weakref.WeakKeyDictionary[nn.Module, _Adapted] = weakref.WeakKeyDictionary()


def _backbone_identity(model: nn.Module) -> tuple[str, str]:
    """``(architecture, content hash of the backbone tensors)``: the hash ``mgr`` records for W0."""
    from manager.arch import head_names
    from manager.backbone import backbone_state, content_hash

    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return str(arch or type(model).__name__), content_hash(backbone_state(model), head_names(model))


def adapt(model: nn.Module, config: AdapterConfig) -> nn.Module:
    """Inject ``config``'s method into ``model`` and freeze all else, in place; returns ``model``.

    The config is checked against the real layer widths first (a ``g`` that does not divide them,
    a rank past the narrowest layer), so a refused config leaves the model untouched. W0's hash
    is taken here, before any weight changes, for the delta's metadata.
    """
    if model in _ADAPTED or consolidator_layers(model):
        raise BadInput("the model is already adapted; adapt a fresh (plain) timm model")
    if not isinstance(config, CONFIG_TYPES):
        raise BadInput(
            "adapt() takes a ConsolidatorConfig, LoraConfig, BitFitConfig, LinearProbeConfig or "
            f"FullConfig, got {type(config).__name__}"
        )
    check_config(model, config)
    identity = _backbone_identity(model)
    inject(model, config)
    method = config.method
    _ADAPTED[model] = _Adapted(method, *identity)
    return model


def _adapted(model: nn.Module) -> _Adapted:
    info = _ADAPTED.get(model)
    if info is not None:
        return info
    # Adapted by other code (the CLI's trainer, a test): tell the method by its layers.
    if consolidator_layers(model):
        method = "consolidator"
    elif any(isinstance(m, LoRALinear) for m in model.modules()):
        method = "lora"
    else:
        raise BadInput("the model is not adapted: call adapt(model, config) first")
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture")
    return _Adapted(method, str(arch or type(model).__name__), "")


def consolidate(model: nn.Module, *, dtype: torch.dtype = torch.float32) -> Delta:
    """The trained model's ``Delta``: what ``mgr`` would store for it, in ``dtype``.

    Consolidator branches fold into their union support, LoRA into ``A`` and ``B``, BitFit into
    its biases (and norms); the head is stored whole. The model is left as it is. A delta with
    NaN or infinite values raises ``Diverged``.
    """
    from manager.train.methods import get_method

    dtype_name(dtype)  # refuse unsupported storage dtypes before any work
    info = _adapted(model)
    meta = DeltaMeta(info.method, info.backbone, info.backbone_hash, dtype)
    delta = get_method(info.method).export(model, meta)
    bad = delta.nonfinite()
    if bad:
        raise Diverged(f"the delta holds NaN or infinite values ({', '.join(bad[:3])})")
    return delta


@dataclass
class TrainResult:
    """What ``train_adapter`` did: each epoch's mean loss, images seen, wall seconds."""

    losses: list[float] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0


def _check_positive(name: str, value: object, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:  # type: ignore[arg-type]
        what = "a positive integer" if integer else "a positive finite number"
        raise BadInput(f"{name} must be {what}, got {value!r}")


def train_adapter(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int = 1,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    device: str | torch.device = "cpu",
    progress: Callable[[int, float], Any] | None = None,
) -> TrainResult:
    """Train an adapted model's trainable tensors on ``loader`` (batches of normalised images
    and integer labels, e.g. a ``torch.utils.data.DataLoader``); cross-entropy, AdamW, cosine.

    ``lr``: the base rate (None: the method's default, as ``mgr train``); LayerNorms and adapter
    branches get the method's own multiples of it (``manager.train.groups``). ``progress(epoch,
    loss)`` is called after each epoch. A NaN or infinite loss or weight raises ``Diverged``.
    """
    from manager.train.config import TrainConfig
    from manager.train.groups import group_lrs, param_groups
    from manager.train.methods import get_method
    from manager.train.step import make_optimizer

    info = _adapted(model)
    _check_positive("epochs", epochs, integer=True)
    rate = get_method(info.method).default_lr if lr is None else lr
    _check_positive("lr", rate)
    cfg = TrainConfig.from_json({"method": info.method, "lr": rate, "weight_decay": weight_decay})
    groups = param_groups(model, cfg.weight_decay, group_lrs(cfg, rate))
    if not groups:
        raise BadInput("the model has nothing to train: call adapt(model, config) first")
    model.to(device).train()
    opt = make_optimizer(groups, rate)
    steps = epochs * len(loader) if hasattr(loader, "__len__") else 0  # type: ignore[arg-type]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=rate * 1e-3)
    trainable = [p for g in groups for p in g["params"]]
    result, t0 = TrainResult(), time.perf_counter()
    for epoch in range(1, epochs + 1):
        total, count = torch.zeros((), dtype=torch.float64, device=device), 0
        for images, labels in loader:
            x, y = images.to(device), labels.to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if steps:
                sched.step()
            total += loss.detach().double() * len(y)
            count += len(y)
        if count == 0:
            raise BadInput("the loader gave no batches")
        mean = total.item() / count  # one host sync per epoch
        if not math.isfinite(mean) or not all(bool(torch.isfinite(p).all()) for p in trainable):
            what = (
                f"the loss is {mean}" if not math.isfinite(mean) else "the weights are not finite"
            )
            raise Diverged(f"training diverged: {what} at epoch {epoch}; try a smaller lr")
        result.losses.append(mean)
        result.images += count
        if progress is not None:
            progress(epoch, mean)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result


class HomeHandle:
    """A manager home opened from Python: the same catalog and files the CLI uses.

    The catalog is opened (migrated, an interrupted switch finished) on first use, as the CLI
    does. ``with open_home(path) as h: ...`` closes it.
    """

    def __init__(self, home: Home):
        from manager.store.fs import Store

        self.home = home
        self.store: Store = Store.of(home)
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            import warnings

            from manager.catalog import open_catalog
            from manager.switch.recovery import recover_if_needed

            self._catalog = open_catalog(self.home)
            recover_if_needed(self.home, self._catalog, warn=warnings.warn)
        return self._catalog

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        """One catalog transaction: committed on success, rolled back on any exception."""
        with self.catalog.session(write=write) as s:
            yield s

    def task_names(self) -> list[str]:
        """Every task's name, in the order ``mgr task list`` shows them."""
        from manager.catalog import tasks

        with self.session(write=False) as s:
            return [t.name for t in tasks.list_tasks(s)]

    def switcher(self, **kwargs: Any) -> Switcher:
        """A ``Switcher`` on this home's catalog (``device``, ``precision``, ``compile``, ...)."""
        return Switcher(self.home, self.catalog, **kwargs)

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def __enter__(self) -> HomeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_home(path: str | Path | None = None) -> HomeHandle:
    """The manager home at ``path`` (None: ``MGR_HOME``, else ``~/.mgr``), as the CLI finds it."""
    return HomeHandle(Home.resolve(path))


__all__ = [
    "BitFitConfig",
    "ConsolidatorConfig",
    "Delta",
    "FullConfig",
    "HomeHandle",
    "LinearProbeConfig",
    "LoraConfig",
    "Switcher",
    "TrainResult",
    "adapt",
    "consolidate",
    "open_home",
    "train_adapter",
]
