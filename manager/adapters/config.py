"""One config per method, each checking itself on construction (PEFT's ``LoraConfig`` and kin).

A config holds what shapes the adapter (branches, rank, which tensors train), never optimisation
settings (those are ``manager.train.config.TrainConfig``'s). A value that can never work is
refused in ``__post_init__`` with one ``BadInput`` line; what depends on the model (a ``g`` that
must divide the layer widths, a rank up to the narrowest layer) is checked by ``adapt`` and the
trainer against the real model.

Importing this module does not import torch (``mgr --help`` reads the CLI's defaults from here);
parsing a structure given as text does, lazily.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from manager.errors import BadInput

TARGETS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
_GROUP = re.compile(r"([0-9]+)([sS]?)", re.ASCII)
_MAX_G = 2**63 - 1  # the catalog stores g as int64


@dataclass(frozen=True)
class Branch:
    """One grouped connection: ``g`` groups, input channels reordered first when ``shuffle``."""

    g: int
    shuffle: bool = False

    def __str__(self) -> str:
        return f"{self.g}{'s' if self.shuffle else ''}"


def parse_groups(text: str, *, shuffle: bool = False, where: str = "groups") -> tuple[Branch, ...]:
    """Branches from ``mgr train --groups``'s text: ``g`` per branch, comma separated, each with
    an optional ``s`` (its input channels reordered; ``shuffle`` reorders all), e.g. ``"96,96s"``.

    ASCII digits only (not "²" or "1_000"). ``where`` names the value in the message (the CLI
    says ``--groups``). No torch: the CLI checks ``--groups`` with this before heavy imports.
    """
    spec = text.replace(" ", "")
    if not spec:
        raise BadInput("a consolidator needs at least one branch")
    out = []
    for item in spec.split(","):
        m = _GROUP.fullmatch(item)
        digits = m.group(1).lstrip("0") if m else ""
        if not digits or len(digits) > 19 or int(digits) > _MAX_G:
            shown = repr(item) if len(repr(item)) <= 24 else repr(item)[:20] + "...'"
            raise BadInput(
                f"bad branch {shown} in {where}: each branch is a positive whole number of "
                "groups with an optional 's', e.g. '384' or '96,96s'"
            )
        out.append(Branch(int(digits), bool(m.group(2)) or shuffle))  # type: ignore[union-attr]
    return tuple(out)


def _bad_number(value: Any, *, integer: bool = False) -> bool:
    kind = int if integer else (int, float)
    return isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value)


@dataclass(frozen=True)
class ConsolidatorConfig:
    """The branches of every adapted layer and the DropPath rate applied to each branch's output.

    ``branches`` takes any spelling of a structure (``"96,48s"``, ``[[96, False]]``, ``Branch``
    objects) and keeps it as ``Branch`` objects; None means the model's default, two input
    channels per group (``default_groups``: g=384 on ViT-B, 96 on DeiT-tiny). The default, g=384,
    is the paper's ViT-B setting. ``shuffle`` reorders the input channels of every branch (as an
    ``s`` on each).
    """

    branches: tuple[Branch, ...] | None = (Branch(384),)
    drop_path: float = 0.0
    shuffle: bool = False

    method = "consolidator"

    def __post_init__(self) -> None:
        if not isinstance(self.shuffle, bool):
            raise BadInput(f"shuffle must be True or False, got {self.shuffle!r}")
        if self.branches is not None:
            object.__setattr__(self, "branches", self._parse(self.branches, self.shuffle))
        dp = self.drop_path
        if _bad_number(dp) or not 0.0 <= dp < 1.0:
            raise BadInput(f"drop_path must be in [0, 1), got {dp!r}")

    @staticmethod
    def _parse(branches: Any, shuffle: bool) -> tuple[Branch, ...]:
        if isinstance(branches, str):
            items: Any = branches
        else:
            try:
                items = list(branches)
            except TypeError:
                raise BadInput(f"bad structure {branches!r}: expected e.g. '96,48s'") from None
        if not items:
            raise BadInput("a consolidator needs at least one branch")
        if isinstance(items, str):
            out = parse_groups(items, shuffle=shuffle)
        elif not all(isinstance(b, Branch) for b in items):
            from manager.delta.structure import parse_structure  # imports torch

            out = tuple(Branch(g, s) for g, s in parse_structure(items, shuffle=shuffle))
        else:
            out = tuple(Branch(b.g, b.shuffle or shuffle) for b in items)
        for b in out:
            if isinstance(b.g, bool) or not isinstance(b.g, int) or b.g < 1:
                raise BadInput(f"branch groups must be positive whole numbers, got g={b.g!r}")
        return out

    @classmethod
    def parse(
        cls, spec: str | Iterable, *, shuffle: bool = False, drop_path: float = 0.0
    ) -> ConsolidatorConfig:
        """Any spelling of a structure (see ``parse_structure``): ``"384,192"`` (all reordered if
        ``shuffle``), ``"96,96s"`` (``s``: reordered), ``[[96, False], [96, True]]``."""
        from manager.delta.structure import parse_structure

        branches = parse_structure(spec, shuffle=shuffle)
        return cls(tuple(Branch(g, s) for g, s in branches), drop_path)

    @property
    def groups(self) -> str:
        """The structure as ``mgr train --groups`` spells it (``""``: the model's default; with
        ``shuffle`` the ``s`` marks are left to ``--shuffle``)."""
        if self.branches is None:
            return ""
        return ",".join(str(b.g) if self.shuffle else str(b) for b in self.branches)

    def for_model(self, model: Any) -> ConsolidatorConfig:
        """This config with ``branches`` chosen for ``model`` where they are None."""
        if self.branches is not None:
            return self
        from manager.adapters.inject import default_groups

        return ConsolidatorConfig(default_groups(model), self.drop_path, self.shuffle)

    def __str__(self) -> str:
        from manager.delta.structure import format_structure

        return format_structure(self.branches) if self.branches is not None else "default"

    def to_json(self) -> str:
        """A stable JSON form for the catalog."""
        import json

        from manager.delta.structure import format_structure

        if self.branches is None:
            raise BadInput("choose the branches (for_model) before recording a structure")
        return json.dumps(
            {"branches": format_structure(self.branches, "json"), "drop_path": self.drop_path}
        )

    @classmethod
    def from_json(cls, text: str) -> ConsolidatorConfig:
        import json

        d = json.loads(text)
        return cls.parse(d["branches"], drop_path=float(d["drop_path"]))


@dataclass(frozen=True)
class LoraConfig:
    """LoRA (Hu et al., 2021) of rank ``rank`` on ``target_modules`` of every block.

    ``alpha`` defaults to the rank (a scale of 1, as ``mgr train --method lora``); the update is
    ``alpha / rank * B A``. ``target_modules``: names inside a block, among ``TARGETS``.
    """

    rank: int = 8
    alpha: float | None = None
    target_modules: tuple[str, ...] = TARGETS

    method = "lora"

    def __post_init__(self) -> None:
        r = self.rank
        if _bad_number(r, integer=True) or r < 1:
            raise BadInput(f"LoRA rank must be a positive integer, got {r!r}")
        alpha = float(r) if self.alpha is None else self.alpha
        if _bad_number(alpha) or not alpha > 0:
            raise BadInput(f"LoRA alpha must be a positive finite number, got {self.alpha!r}")
        object.__setattr__(self, "alpha", float(alpha))
        targets = self.target_modules
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        unknown = [t for t in targets if t not in TARGETS]
        if unknown or not targets:
            raise BadInput(
                f"LoRA target_modules must be a non-empty subset of {', '.join(TARGETS)}; "
                f"got {', '.join(map(repr, unknown or targets)) or 'none'}"
            )
        object.__setattr__(self, "target_modules", tuple(dict.fromkeys(targets)))

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank  # type: ignore[arg-type]


@dataclass(frozen=True)
class BitFitConfig:
    """BitFit (Ben Zaken et al., 2022): the blocks' biases and the head train, nothing else;
    ``with_norms`` adds every LayerNorm (``mgr train --method bitfit_ln``)."""

    with_norms: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.with_norms, bool):
            raise BadInput(f"BitFit with_norms must be True or False, got {self.with_norms!r}")

    @property
    def method(self) -> str:
        return "bitfit_ln" if self.with_norms else "bitfit"


@dataclass(frozen=True)
class LinearProbeConfig:
    """The linear probe baseline: the head alone trains (``mgr train --method linear``)."""

    method = "linear"


@dataclass(frozen=True)
class FullConfig:
    """Full fine-tuning: every weight trains (``mgr train --method full``); the stored delta is
    every tensor, so it costs a whole backbone on disk."""

    method = "full"


AdapterConfig = ConsolidatorConfig | LoraConfig | BitFitConfig | LinearProbeConfig | FullConfig
CONFIG_TYPES = (ConsolidatorConfig, LoraConfig, BitFitConfig, LinearProbeConfig, FullConfig)
# Every method by name, in the order ``mgr train --help`` lists them.
METHODS = ("consolidator", "linear", "bitfit", "bitfit_ln", "lora", "full")


def method_config(
    method: str = "consolidator",
    *,
    groups: str = "",
    shuffle: bool = False,
    drop_path: float = 0.0,
    lora_rank: int = 8,
    lora_alpha: float | None = None,
    lora_targets: Iterable[str] = TARGETS,
) -> AdapterConfig:
    """The config of ``method`` from the flat options ``mgr train`` takes (and the catalog
    records); the options of other methods are ignored. ``groups=""``: the model's default."""
    if method == "consolidator":
        return ConsolidatorConfig(groups or None, drop_path, shuffle)
    if method == "lora":
        return LoraConfig(lora_rank, lora_alpha, tuple(lora_targets))
    if method in ("bitfit", "bitfit_ln"):
        return BitFitConfig(with_norms=method == "bitfit_ln")
    if method == "linear":
        return LinearProbeConfig()
    if method == "full":
        return FullConfig()
    raise BadInput(f"unknown method {method!r}; known: {', '.join(METHODS)}")


def flat_options(config: AdapterConfig) -> dict[str, Any]:
    """``method_config``'s inverse: the flat options as the catalog has always recorded them
    (the other methods' at their defaults, so recorded settings hash as before). LoRA's alpha
    and targets appear only when they differ from their defaults."""
    out: dict[str, Any] = {
        "method": config.method,
        "groups": "",
        "shuffle": False,
        "drop_path": 0.0,
        "lora_rank": LoraConfig.rank,
    }
    if isinstance(config, ConsolidatorConfig):
        out.update(groups=config.groups, shuffle=config.shuffle, drop_path=config.drop_path)
    elif isinstance(config, LoraConfig):
        out["lora_rank"] = config.rank
        if config.alpha != float(config.rank):
            out["lora_alpha"] = config.alpha
        if config.target_modules != TARGETS:
            out["lora_targets"] = list(config.target_modules)
    return out


__all__ = [
    "CONFIG_TYPES",
    "METHODS",
    "TARGETS",
    "AdapterConfig",
    "BitFitConfig",
    "Branch",
    "ConsolidatorConfig",
    "FullConfig",
    "LinearProbeConfig",
    "LoraConfig",
    "flat_options",
    "method_config",
    "parse_groups",
]
