"""Any ImageFolder tree: ``<root>/{train,val,test}/<class>/*`` or a flat ``<root>/<class>/*``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from manager.datasets.registry import (
    DatasetKind,
    Labeled,
    every_kth,
    register_dataset,
    resolve_root,
)
from manager.errors import MgrError

SPLIT_DIRS = ("train", "val", "test")
# A flat tree is split per class by rank modulo 5: 3 train, 1 val, 1 test (60/20/20).
FLAT_PICKS = {"train": (0, 1, 2), "val": (3,), "test": (4,), "trainval": (0, 1, 2, 3)}


class FixedClassesFolder(ImageFolder):
    """An ImageFolder whose classes are given, so val/test use train's label numbering."""

    def __init__(self, root: Path, classes: list[str], transform: Callable | None = None):
        self._fixed = classes  # read by find_classes during ImageFolder.__init__
        super().__init__(str(root), transform=transform, allow_empty=True)

    def find_classes(self, directory):
        return self._fixed, {c: i for i, c in enumerate(self._fixed)}


def _class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _is_split_tree(root: Path) -> bool:
    return any((root / s).is_dir() for s in SPLIT_DIRS)


@register_dataset("imagefolder")
class Folder(DatasetKind):
    """Split folders where present; a missing ``val/`` is carved from ``train/`` (every fifth image
    of each class). A flat tree is split per class 60/20/20 by sorted file name."""

    def locate(self, root: Path | None, **options) -> Path | None:
        if root is None or not root.is_dir():
            return None
        top = root / "train" if _is_split_tree(root) else root
        return root if top.is_dir() and _class_dirs(top) else None

    def classes(self, found: Path | None, **options) -> list[str]:
        if found is None:
            raise MgrError("imagefolder: class names need the data set on disk; pass --root")
        return _class_dirs(found / "train" if _is_split_tree(found) else found)

    def build(
        self, root, split: str, transform: Callable | None, download: bool, **options
    ) -> Dataset:
        if options:
            raise MgrError(f"imagefolder: unknown options {sorted(options)}")
        if download:
            raise MgrError("imagefolder: cannot be downloaded; pass --root")
        root = resolve_root(root)
        if not root.is_dir():
            raise MgrError(
                f"imagefolder: missing {root} (expected <root>/<class>/* or <root>/train/<class>/*)"
            )
        if _is_split_tree(root) and not (root / "train").is_dir():
            raise MgrError(f"imagefolder: missing {root / 'train'} (split folders need train/)")
        found = self.locate(root)
        if found is None:
            raise MgrError(f"imagefolder: no class folders in {root}")
        classes = self.classes(found)
        if not _is_split_tree(root):
            ds = self._open(root, classes, transform)
            return Labeled.subset(ds, every_kth(ds.targets, 5, FLAT_PICKS[split]))
        if split == "trainval":
            parts = [self.build(root, s, transform, False) for s in ("train", "val")]
            return Labeled.concat(parts)
        folder = root / split
        if split == "test" and not folder.is_dir():
            raise MgrError(f"imagefolder: missing {folder} (needed for split 'test')")
        if split != "train" and folder.is_dir():
            return self._open(folder, classes, transform)
        ds = self._open(root / "train", classes, transform)
        if (root / "val").is_dir():
            return ds
        # No val/: hold out every fifth image of each train class, and train on the rest.
        return Labeled.subset(
            ds, every_kth(ds.targets, 5, (4,) if split == "val" else (0, 1, 2, 3))
        )

    @staticmethod
    def _open(folder: Path, classes: list[str], transform: Callable | None) -> ImageFolder:
        extra = sorted(set(_class_dirs(folder)) - set(classes))
        if extra:
            raise MgrError(
                f"imagefolder: {folder} has classes not in train/: {', '.join(extra[:5])}"
            )
        ds = FixedClassesFolder(folder, classes, transform)
        if not len(ds):
            raise MgrError(f"imagefolder: no images in {folder}")
        return ds
