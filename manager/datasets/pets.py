"""Oxford-IIIT Pet in torchvision's on-disk layout (``<root>/oxford-iiit-pet/...``)."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset
from torchvision.datasets import OxfordIIITPet

from manager.datasets import classes as light
from manager.datasets.registry import (
    Labeled,
    dataset_folder,
    every_kth,
    fetch_or_check,
    register_dataset,
    resolve_root,
)
from manager.errors import MgrError


@register_dataset("pets")
class Pets(light.Pets):
    """Oxford-IIIT Pet: official trainval / test; train and val split trainval 4:1 per breed.
    Where it is and its class names: `manager.datasets.classes.Pets`; here, the images."""

    def build(
        self, root, split: str, transform: Callable | None, download: bool, **options
    ) -> Dataset:
        if options:
            raise MgrError(f"pets: unknown options {sorted(options)}")
        base = dataset_folder(resolve_root(root), self.folder)
        fetch = (
            (lambda: OxfordIIITPet(base.parent, split="test", download=True)) if download else None
        )
        fetch_or_check("pets", base, self.required, "torchvision's OxfordIIITPet layout", fetch)
        official = "test" if split == "test" else "trainval"
        try:
            ds = OxfordIIITPet(base.parent, split=official, transform=transform, download=False)
        except ValueError:
            raise MgrError(
                f"pets: {base / 'annotations' / official}.txt: expected lines "
                "'NAME CLASS_ID SPECIES BREED_ID'"
            ) from None
        # torchvision keeps these private: the split's image paths and 0-based breed labels.
        ds.targets = ds._labels
        absent = [f for f in ds._images if not f.exists()]
        if absent:
            raise MgrError(
                f"pets: missing {absent[0]} and {len(absent) - 1} more {official} images"
            )
        # torchvision derives classes from this split alone; both splits give the full list.
        ds.classes = light.pet_breeds(base)
        if split in ("train", "val"):
            picks = (0, 1, 2, 3) if split == "train" else (4,)
            return Labeled.subset(ds, every_kth(ds.targets, 5, picks))
        return ds
