"""Data sets by name: flowers102, pets, vtab1k, imagefolder, synthetic.

``create_dataset(name, root, split, transform)`` opens one split; ``describe(name, root)`` gives
class names without loading images. Every data set has ``.classes`` and ``.targets``.
"""

from manager.datasets import flowers, folder, pets, synthetic, vtab  # noqa: F401  (register)
from manager.datasets.registry import (
    DATA_DIR,
    DatasetKind,
    create_dataset,
    default_root,
    describe,
    known_definition,
    list_datasets,
    register_dataset,
)
from manager.datasets.synthetic import SyntheticShapes
from manager.datasets.transforms import data_config, eval_transform, train_transform, transform_for

__all__ = [
    "DATA_DIR",
    "DatasetKind",
    "SyntheticShapes",
    "create_dataset",
    "data_config",
    "default_root",
    "describe",
    "eval_transform",
    "known_definition",
    "list_datasets",
    "register_dataset",
    "train_transform",
    "transform_for",
]
