"""Hot-swapping consolidated deltas onto the shared backbone, in memory and on disk.

``Switcher`` (in memory) and ``switch_live``/``recover`` (the live files) import torch; they are
loaded on first use so that the cheap recovery hook (``recovery``) stays light.
"""

from __future__ import annotations

from manager.lazy import lazy_exports

_LAZY = {
    "Switcher": "manager.switch.switcher",
    "switch_live": "manager.switch.live",
    "recover": "manager.switch.live",
    "repair_live": "manager.switch.live",
}


__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
