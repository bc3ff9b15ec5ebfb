"""Spec strings ``NAME[:key=value,key=value]`` for backbones and data sets."""

from __future__ import annotations

from typing import Any

from manager.errors import MgrError


def parse_value(text: str) -> Any:
    """``"32"`` -> 32, ``"0.5"`` -> 0.5, ``"true"`` -> True, ``"none"`` -> None, else the string."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def split_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:k=v,k2=v2"`` into ``("name", {"k": v, "k2": v2})`` with typed values."""
    name, _, opts = spec.strip().partition(":")
    if not name:
        raise MgrError(f"empty name in spec {spec!r} (expected NAME[:key=value,...])")
    kwargs: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise MgrError(f"bad option {item!r} in spec {spec!r} (expected key=value)")
        kwargs[key.strip()] = parse_value(value)
    return name.strip(), kwargs


def format_spec(name: str, kwargs: dict[str, Any]) -> str:
    """The inverse of `split_spec` (keys sorted, so equal specs give equal strings)."""
    if not kwargs:
        return name
    return name + ":" + ",".join(f"{k}={kwargs[k]}" for k in sorted(kwargs))
