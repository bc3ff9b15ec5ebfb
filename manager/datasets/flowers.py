"""Oxford Flowers-102 in torchvision's on-disk layout (``<root>/flowers-102/...``)."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset
from torchvision.datasets import Flowers102

from manager.datasets import classes as light
from manager.datasets.registry import (
    Labeled,
    dataset_folder,
    fetch_or_check,
    register_dataset,
    resolve_root,
)
from manager.errors import MgrError


@register_dataset("flowers102")
class Flowers(light.Flowers):
    """Flowers-102: official split train 1,020 / val 1,020 / test 6,149; trainval = train + val.
    Where it is and its class names: `manager.datasets.classes.Flowers`; here, the images."""

    def build(
        self, root, split: str, transform: Callable | None, download: bool, **options
    ) -> Dataset:
        if options:
            raise MgrError(f"flowers102: unknown options {sorted(options)}")
        if split == "trainval":
            parts = [self.build(root, s, transform, download) for s in ("train", "val")]
            return Labeled.concat(parts)
        base = dataset_folder(resolve_root(root), self.folder)
        fetch = (lambda: Flowers102(base.parent, split=split, download=True)) if download else None
        fetch_or_check("flowers102", base, self.required, "torchvision's Flowers102 layout", fetch)
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
