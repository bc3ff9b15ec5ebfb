"""Hyper-parameters of one training run, as recorded in the catalog.

``TrainConfig`` holds the optimisation settings and, in ``adapter``, the method's own config
(``manager.adapters.config``). Both check themselves on construction (``BadInput``). The
catalog's record stays the flat form it has always been (``to_json``: ``method``, ``groups``,
``shuffle``, ``drop_path``, ``lora_rank``, then the optimisation settings), so recorded settings
hash and resume as before; ``from_json`` reads it back. No torch here: ``mgr train --help`` reads
its defaults from these classes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from manager.adapters.config import (
    CONFIG_TYPES,
    AdapterConfig,
    ConsolidatorConfig,
    flat_options,
    method_config,
)
from manager.errors import BadInput

MAX_EPOCHS = 1_000_000  # a typo guard: no schedule is meant to be longer
MAX_SEED = 2**63 - 1  # torch.manual_seed and numpy take 0..2**63-1
IMG_SIZES = (16, 8192)
BATCH_SIZES = (1, 65536)
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
PRECISIONS = ("fp32", "bf16", "fp16")
# The flat names of the method's options (``method_config``'s keywords and ``method``).
ADAPTER_KEYS = (
    "method", "groups", "shuffle", "drop_path", "lora_rank", "lora_alpha", "lora_targets",
)  # fmt: skip


def default_adapter() -> ConsolidatorConfig:
    """The Consolidator with the model's default structure (two input channels per group)."""
    return ConsolidatorConfig(branches=None)


def _whole(name: str, value: Any, lo: int, hi: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadInput(f"{name} must be a whole number in {lo}..{hi}, got {value!r}")


def _rate(name: str, value: Any, *, zero: bool = False, optional: bool = True) -> None:
    if optional and value is None:
        return
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        raise BadInput(f"{name} must be a finite number {bound}, got {value!r}")


def _choice(name: str, value: Any, allowed: tuple[str, ...], *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if value not in allowed:
        raise BadInput(f"{name} must be one of {', '.join(allowed)}, got {value!r}")


@dataclass
class TrainConfig:
    """The paper's recipe by default: AdamW, batch 64, 100 epochs, cosine with 10 warm-up epochs,
    the Consolidator at the model's default structure."""

    adapter: AdapterConfig = field(default_factory=default_adapter)
    epochs: int = 100
    warmup_epochs: int | None = None  # None = 10% of the epochs, as the paper (10 of 100)
    lr: float | None = None  # head, biases (and full fine-tuning's weights); None = the method's
    lr_norm: float | None = None  # every LayerNorm; None = lr x the method's norm scale
    lr_branch: float | None = None  # adapter branches (Consolidator, LoRA A/B); None = lr x scale
    weight_decay: float = 1e-4
    batch_size: int = 64  # the global batch, over every torchrun process
    img_size: int | None = None  # None = the backbone's own size
    seed: int = 0
    storage_dtype: str = "float32"
    # Compute settings (issue 11). precision: "fp32", "bf16" or "fp16" autocast (None = bf16 on
    # CUDA, fp32 elsewhere; parameters and artifact keep their dtypes); compile: torch.compile
    # the forward.
    precision: str | None = None
    compile: bool = False
    extra: dict = field(default_factory=dict)
    tune: dict | None = None  # the search that chose these settings (mgr train --tune)

    def __post_init__(self) -> None:
        if not isinstance(self.adapter, CONFIG_TYPES):
            raise BadInput(
                "adapter must be a method config (ConsolidatorConfig, LoraConfig, BitFitConfig, "
                f"LinearProbeConfig, FullConfig), got {type(self.adapter).__name__}"
            )
        _whole("epochs", self.epochs, 1, MAX_EPOCHS)
        _whole("warmup_epochs", self.warmup_epochs, 0, MAX_EPOCHS, optional=True)
        for name in ("lr", "lr_norm", "lr_branch"):
            _rate(name, getattr(self, name))
        _rate("weight_decay", self.weight_decay, zero=True, optional=False)
        _whole("batch_size", self.batch_size, *BATCH_SIZES)
        _whole("img_size", self.img_size, *IMG_SIZES, optional=True)
        _whole("seed", self.seed, 0, MAX_SEED)
        _choice("storage_dtype", self.storage_dtype, STORAGE_DTYPES)
        _choice("precision", self.precision, PRECISIONS, optional=True)
        if not isinstance(self.compile, bool):
            raise BadInput(f"compile must be True or False, got {self.compile!r}")

    @property
    def method(self) -> str:
        """The method's name (``consolidator``, ``lora``, ...), from ``adapter``."""
        return self.adapter.method

    @property
    def drop_path(self) -> float:
        """The Consolidator's branch DropPath; 0 for the other methods."""
        return float(getattr(self.adapter, "drop_path", 0.0))

    def to_json(self) -> dict:
        """The flat record (see the module docstring)."""
        d = {k: v for k, v in asdict(self).items() if k != "adapter"}
        return json.loads(json.dumps({**flat_options(self.adapter), **d}))

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from its flat record (or from ``mgr train``'s flat options)."""
        d = dict(d)
        options = {k: d.pop(k) for k in ADAPTER_KEYS if k in d}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise BadInput(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(adapter=method_config(**options), **d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``, which may name the method's flat options (``drop_path``...):
        those go to ``adapter``."""
        if not set(changes) & set(ADAPTER_KEYS):
            return dataclasses.replace(self, **changes)
        return TrainConfig.from_json({**self.to_json(), **changes})

    def fingerprint(self) -> str:
        """What a checkpoint must match to be resumed (everything but the epoch count and the
        record of a search that led to these settings)."""
        d = self.to_json()
        d.pop("epochs", None)
        d.pop("tune", None)
        return json.dumps(d, sort_keys=True)


PROMOTE_MODES = ("gate", "always", "never")
MAX_CLASS_DROP = 30.0  # points of one class's top-1 (see BENCHMARKS.md, "Continual")


@dataclass(frozen=True)
class RunOptions:
    """How ``mgr train`` runs a training and records it, beyond the settings it trains with.

    ``promote``: ``gate`` (the champion changes only if the new version beats it by
    ``gate_margin`` points on ``gate_split``, see ``manager.train.gate``), ``always`` or
    ``never``. ``init``: warm start from that version's adapter (``champion``, ``TASK@V``).
    ``if_changed``: train only when the data, classes or settings differ from the champion's
    (``hash_data``: fingerprint file contents too). ``max_class_drop``: the gate's limit on any
    one class's loss of top-1 (points; None: no limit). ``budget_bytes``: refuse (or with
    ``fit_budget``, fit) an artifact above it. ``tune_budget``, ``tune_configs``: the search's
    cost in runs and its first rung's size (``mgr train --tune``).
    """

    device: str = "auto"
    resume: bool = False
    fit_budget: bool = False
    budget_bytes: int | None = None
    promote: str = "gate"
    gate_margin: float = 0.0
    gate_split: str | None = None
    train_split: str | None = None  # None: the official training split (train, or trainval)
    eval_split: str = "test"
    init: str | None = None
    if_changed: bool = False
    hash_data: bool = False
    max_class_drop: float | None = MAX_CLASS_DROP
    tune_budget: float = 2.0
    tune_configs: int = 9

    def __post_init__(self) -> None:
        _choice("promote", self.promote, PROMOTE_MODES)
        _whole("budget_bytes", self.budget_bytes, 0, MAX_SEED, optional=True)
        ok = isinstance(self.gate_margin, int | float) and math.isfinite(self.gate_margin)
        if not ok or abs(self.gate_margin) > 100:
            raise BadInput(f"gate_margin must be a number of points in -100..100, got "
                           f"{self.gate_margin!r}")  # fmt: skip
        if self.max_class_drop is not None:
            _rate("max_class_drop", self.max_class_drop, zero=True, optional=False)
        _rate("tune_budget", self.tune_budget, optional=False)
        _whole("tune_configs", self.tune_configs, 2, 1000)
