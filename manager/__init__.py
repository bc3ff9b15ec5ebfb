"""mgr: one frozen ViT backbone, many tasks, mergeable Consolidator adapters.

The Python API (see README, "Python API")::

    from manager import ConsolidatorConfig, LoraConfig, BitFitConfig, adapt, consolidate, Delta
    from manager import LinearProbeConfig, FullConfig
    from manager import train_adapter, Switcher, open_home

Names are resolved on first use (PEP 562), so ``import manager`` alone, and the CLI's catalog
commands, do not import torch.
"""

from __future__ import annotations

from manager.lazy import lazy_exports

__version__ = "0.1.0"

# name -> the module that defines it. Imported by name (importlib) on first access: the package
# is the bottom layer, and this facade must not pull the layers above it in at import time.
_LAZY = {
    **dict.fromkeys(
        ("MgrError", "NotFound", "Conflict", "BudgetExceeded", "Corrupt", "Diverged", "Busy",
         "BadInput"),
        "manager.errors",
    ),
    **dict.fromkeys(("ConsolidatorConfig", "LoraConfig", "BitFitConfig", "LinearProbeConfig",
                     "FullConfig"), "manager.adapters.config"),
    "Delta": "manager.delta.delta",
    "Switcher": "manager.switch.switcher",
    **dict.fromkeys(
        ("adapt", "consolidate", "train_adapter", "TrainResult", "open_home", "HomeHandle"),
        "manager.api",
    ),
}  # fmt: skip

__all__ = ["__version__", *_LAZY]

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
