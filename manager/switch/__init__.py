"""Hot-swapping consolidated deltas onto the shared backbone, in memory and on disk.

``Switcher`` (in memory) and ``switch_live``/``recover`` (the live files) import torch; they are
loaded on first use so that the cheap recovery hook (``recovery``) stays light.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "Switcher": "manager.switch.switcher",
    "switch_live": "manager.switch.live",
    "recover": "manager.switch.live",
    "repair_live": "manager.switch.live",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(name)


__all__ = sorted(_LAZY)
