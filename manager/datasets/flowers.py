"""Oxford Flowers-102 in torchvision's on-disk layout (``<root>/flowers-102/...``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import Flowers102

from manager.datasets.registry import (
    DatasetKind,
    Labeled,
    dataset_folder,
    first_missing,
    register_dataset,
    resolve_root,
)
from manager.errors import MgrError

FOLDER = "flowers-102"
REQUIRED = ("jpg", "imagelabels.mat", "setid.mat")


@register_dataset("flowers102")
class Flowers(DatasetKind):
    """Flowers-102: official split train 1,020 / val 1,020 / test 6,149; trainval = train + val."""

    def locate(self, root: Path | None, **options) -> Path | None:
        if root is None:
            return None
        base = dataset_folder(root, FOLDER)
        return base if first_missing(base, REQUIRED) is None else None

    def classes(self, found: Path | None, **options) -> list[str]:
        # cat_to_name.json (keys "1".."102") is the common source of the real names.
        names_file = found / "cat_to_name.json" if found else None
        if names_file and names_file.is_file():
            with open(names_file, encoding="utf-8") as f:
                names = json.load(f)
            try:
                return [names[str(i)] for i in range(1, 103)]
            except KeyError as e:
                raise MgrError(
                    f"flowers102: {names_file} has no entry {e} (expected 1..102)"
                ) from None
        return super().classes(None)

    def build(
        self, root, split: str, transform: Callable | None, download: bool, **options
    ) -> Dataset:
        if options:
            raise MgrError(f"flowers102: unknown options {sorted(options)}")
        if split == "trainval":
            parts = [self.build(root, s, transform, download) for s in ("train", "val")]
            return Labeled.concat(parts)
        base = dataset_folder(resolve_root(root), FOLDER)
        if download:
            try:
                Flowers102(base.parent, split=split, download=True)
            except Exception as e:  # network and archive errors alike: one clear line
                raise MgrError(f"flowers102: download to {base} failed: {e}") from None
        missing = first_missing(base, REQUIRED)
        if missing is not None:
            raise MgrError(
                f"flowers102: missing {missing} (expected torchvision's Flowers102 layout; "
                "pass --root or --download)"
            )
        try:
            ds = Flowers102(base.parent, split=split, transform=transform, download=False)
        except RuntimeError:  # torchvision's md5 check of the .mat files failed
            raise MgrError(
                f"flowers102: {base / 'imagelabels.mat'} or {base / 'setid.mat'} is not the "
                "official file (checksum mismatch)"
            ) from None
        # torchvision keeps these lists private; they are the split's files and 0-based labels.
        files, ds.targets = ds._image_files, ds._labels
        absent = [f for f in files if not f.exists()]
        if absent:
            raise MgrError(
                f"flowers102: missing {absent[0]} and {len(absent) - 1} more {split} images"
            )
        ds.classes = self.classes(base)
        return ds
