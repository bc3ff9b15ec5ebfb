"""Data sets by name: flowers102, pets, vtab1k, imagefolder, synthetic.

``create_dataset(name, root, split, transform)`` opens one split; ``describe(name, root)`` gives
class names without loading images. Every data set has ``.classes`` and ``.targets``.

Names are loaded on first use (PEP 562): ``describe`` and the registry are light, while
``create_dataset`` and the transforms import torch and torchvision, seconds that ``mgr task
add`` does not pay (issue 20).
"""

from __future__ import annotations

from manager.lazy import lazy_exports

_LAZY = {
    "DATA_DIR": "manager.datasets.registry",
    "DatasetKind": "manager.datasets.registry",
    "create_dataset": "manager.datasets.registry",
    "default_root": "manager.datasets.registry",
    "describe": "manager.datasets.registry",
    "known_definition": "manager.datasets.registry",
    "list_datasets": "manager.datasets.registry",
    "register_dataset": "manager.datasets.registry",
    "SyntheticShapes": "manager.datasets.synthetic",
    "data_config": "manager.datasets.transforms",
    "eval_transform": "manager.datasets.transforms",
    "train_transform": "manager.datasets.transforms",
    "transform_for": "manager.datasets.transforms",
}


__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
