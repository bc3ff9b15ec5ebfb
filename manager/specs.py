"""Spec strings ``NAME[:key=value,key=value]`` for backbones and data sets, and their checks."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from manager.errors import BadInput

MAX_INT64 = 2**63 - 1
# ASCII only: int() and float() also read "٣", "1_000" and " 1 ", which no spec should mean.
_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_FLOAT = re.compile(r"[+-]?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_MAX_INT_DIGITS = 100  # far past any real option; int() refuses 4300+ digits anyway


def parse_value(text: str) -> Any:
    """``"32"`` -> 32, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, else the string."""
    value = text.strip()
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    if _INT.fullmatch(value) and len(value) <= _MAX_INT_DIGITS:
        return int(value)
    if _FLOAT.fullmatch(value):
        return float(value)  # may be inf ("1e400"): range checks say so, not a parse error
    return value


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:k=v,k2=v2"`` into ``("name", {"k": v, "k2": v2})`` with typed values."""
    name, _, opts = str(spec).strip().partition(":")
    if not name.strip():
        raise BadInput(f"empty name in spec {_short(spec)} (expected NAME[:key=value,...])")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise BadInput(f"bad option {_short(item)} in spec {_short(spec)} (expected key=value)")
        kwargs[key.strip()] = parse_value(value)
    return name.strip(), kwargs


def format_spec(name: str, kwargs: dict[str, Any]) -> str:
    """The inverse of `split_spec` (keys sorted, so equal specs give equal strings)."""
    if not kwargs:
        return name
    return name + ":" + ",".join(f"{k}={kwargs[k]}" for k in sorted(kwargs))


def _short(text: object, limit: int = 60) -> str:
    r = repr(str(text))
    return r if len(r) <= limit else r[: limit - 4] + "...'"


@dataclass(frozen=True)
class Option:
    """One known spec option: its type (int, float, bool or str) and inclusive range."""

    type: type
    default: Any = None
    min: float | None = None
    max: float | None = None
    help: str = ""

    def check(self, owner: str, key: str, value: Any) -> Any:
        """``value`` if it has this option's type and range, else BadInput naming ``owner``."""
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is str and value is None and self.default is None:
            return None
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a name"}
        wrong = not isinstance(value, self.type) or (self.type is int and isinstance(value, bool))
        if wrong or (self.type is float and not math.isfinite(value)):
            what = kind[self.type] if wrong else "a finite number"
            rng = f" ({self._range()})" if self._range() else ""
            raise BadInput(f"{owner}: {key} must be {what}{rng}, got {_show(value)}")
        if self.type in (int, float) and (
            (self.min is not None and value < self.min)
            or (self.max is not None and value > self.max)
        ):
            raise BadInput(f"{owner}: {key} must be {self._range()}, got {_show(value)}")
        return value

    def _range(self) -> str:
        if self.type not in (int, float) or (self.min is None and self.max is None):
            return ""
        if self.max is None:
            return f">= {_num(self.min)}"
        if self.min is None:
            return f"<= {_num(self.max)}"
        return f"{_num(self.min)}..{_num(self.max)}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _show(value: Any) -> str:
    text = str(value).lower() if isinstance(value, bool) or value is None else str(value)
    return text if len(text) <= 30 else text[:26] + "..."


def check_options(
    owner: str,
    options: Mapping[str, Any],
    known: Mapping[str, Option | type],
    *,
    strict: bool = True,
) -> dict[str, Any]:
    """Check each option against ``known`` (an `Option`, or a bare type for "any value of that
    type"); with ``strict`` an unknown key is an error too, listing the known ones."""
    unknown = [k for k in options if k not in known]
    if strict and unknown:
        names = ", ".join(_short(k, 30) for k in unknown)
        hint = f"known: {', '.join(known)}" if known else "it takes none"
        raise BadInput(f"{owner}: unknown options {names}; {hint}")
    out = dict(options)
    for key, spec in known.items():
        if key in options:
            out[key] = (spec if isinstance(spec, Option) else Option(spec)).check(
                owner, key, options[key]
            )
    return out


# The keyword arguments a backbone spec may carry, with their types and ranges: an allow-list.
# A spec goes to timm.create_model, whose other arguments read files or the network
# (checkpoint_path, cache_dir, pretrained_cfg_overlay, ...): a spec in a catalog row must not make
# mgr read /etc/shadow. The ranges stop a huge depth or width building for minutes first.
BACKBONE_OPTIONS: dict[str, Option] = {
    "img_size": Option(int, None, 1, 8192, "input resolution"),
    "patch_size": Option(int, None, 1, 8192, "patch side"),
    "depth": Option(int, None, 1, 256, "number of blocks"),
    "num_heads": Option(int, None, 1, 1024, "attention heads"),
    "embed_dim": Option(int, None, 1, 65536, "token width"),
    "in_chans": Option(int, None, 1, 1024, "input channels"),
    "num_classes": Option(int, None, 0, 1_000_000, "classes of timm's own head"),
    "mlp_ratio": Option(float, None, 0.0, 64.0, "MLP width / token width"),
    "drop_rate": Option(float, None, 0.0, 1.0),
    "drop_path_rate": Option(float, None, 0.0, 1.0),
    "attn_drop_rate": Option(float, None, 0.0, 1.0),
    "proj_drop_rate": Option(float, None, 0.0, 1.0),
    "pos_drop_rate": Option(float, None, 0.0, 1.0),
    "qkv_bias": Option(bool),
    "class_token": Option(bool),
    "no_embed_class": Option(bool),
    "qk_norm": Option(bool),
    "reg_tokens": Option(int, None, 0, 1024, "register tokens"),
    "init_values": Option(float, None, 0.0, 1e6, "LayerScale init"),
    "global_pool": Option(str, None, help="token, avg, max, avgmax, map or ''"),
}
GLOBAL_POOLS = ("", "token", "avg", "max", "avgmax", "map")
# Named in the refusal: they read files or reach the network.
BACKBONE_REFUSED = ("checkpoint_path", "cache_dir", "pretrained_cfg", "pretrained_cfg_overlay")


def validate_backbone_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """`split_spec` plus the allow-list `BACKBONE_OPTIONS`: each key known, of its type and range.

    A model name must look like a timm name (letters, digits, ``_``, ``.``, ``-``, ``/``); whether
    timm knows it is checked where timm is imported. Options that name a file or a URL are refused.
    """
    name, kwargs = split_spec(spec)
    if not re.fullmatch(r"[A-Za-z0-9_./-]+", name, re.ASCII):
        raise BadInput(f"bad backbone name {_short(name, 40)}: expected a timm model name")
    owner = f"backbone {name}"
    for key in kwargs:
        if key in BACKBONE_REFUSED or key.endswith(("_path", "_dir", "_url", "_file")):
            raise BadInput(
                f"{owner}: option {_short(key, 30)} is refused: a spec may not name a file or a "
                f"URL (the weights are given apart); allowed: {', '.join(BACKBONE_OPTIONS)}",
                hint="weights come from --weights",
            )
    out = check_options(owner, kwargs, BACKBONE_OPTIONS, strict=True)
    if out.get("global_pool") not in (None, *GLOBAL_POOLS):
        raise BadInput(
            f"{owner}: global_pool must be one of {', '.join(map(repr, GLOBAL_POOLS))}, "
            f"got {_short(out['global_pool'], 30)}"
        )
    return name, out
