"""Oxford-IIIT Pet in torchvision's on-disk layout (``<root>/oxford-iiit-pet/...``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import OxfordIIITPet

from manager.datasets.registry import (
    DatasetKind,
    Labeled,
    dataset_folder,
    every_kth,
    first_missing,
    register_dataset,
    resolve_root,
)
from manager.errors import MgrError

FOLDER = "oxford-iiit-pet"
REQUIRED = ("images", "annotations/trainval.txt", "annotations/test.txt")


def _breeds(base: Path) -> list[str]:
    """Breed names by class id from the annotation files, formatted as torchvision does."""
    breeds: dict[int, str] = {}
    for split in ("trainval", "test"):
        path = base / "annotations" / f"{split}.txt"
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip() or line.startswith("#"):
                continue
            try:
                image_id, class_id = line.split()[:2]
                breeds[int(class_id)] = " ".join(
                    p.title() for p in image_id.rsplit("_", 1)[0].split("_")
                )
            except ValueError:
                raise MgrError(
                    f"pets: {path}:{n}: expected 'NAME CLASS_ID SPECIES BREED_ID'"
                ) from None
    if sorted(breeds) != list(range(1, len(breeds) + 1)):
        raise MgrError(f"pets: class ids in {base / 'annotations'} are not 1..N")
    return [breeds[i] for i in range(1, len(breeds) + 1)]


@register_dataset("pets")
class Pets(DatasetKind):
    """Oxford-IIIT Pet: official trainval / test; train and val split trainval 4:1 per breed."""

    def locate(self, root: Path | None, **options) -> Path | None:
        if root is None:
            return None
        base = dataset_folder(root, FOLDER)
        return base if first_missing(base, REQUIRED) is None else None

    def classes(self, found: Path | None, **options) -> list[str]:
        return _breeds(found) if found else super().classes(None)

    def build(
        self, root, split: str, transform: Callable | None, download: bool, **options
    ) -> Dataset:
        if options:
            raise MgrError(f"pets: unknown options {sorted(options)}")
        base = dataset_folder(resolve_root(root), FOLDER)
        if download:
            try:
                OxfordIIITPet(base.parent, split="test", download=True)
            except Exception as e:  # network and archive errors alike: one clear line
                raise MgrError(f"pets: download to {base} failed: {e}") from None
        missing = first_missing(base, REQUIRED)
        if missing is not None:
            raise MgrError(
                f"pets: missing {missing} (expected torchvision's OxfordIIITPet layout; "
                "pass --root or --download)"
            )
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
        ds.classes = _breeds(base)
        if split in ("train", "val"):
            picks = (0, 1, 2, 3) if split == "train" else (4,)
            return Labeled.subset(ds, every_kth(ds.targets, 5, picks))
        return ds
