"""VTAB-1k in the folder layout the paper used: list files of ``relative/path label`` lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from manager.datasets import classes as light
from manager.datasets.classes import read_list
from manager.datasets.registry import register_dataset, resolve_root
from manager.errors import MgrError

LIST_FILES, REQUIRED = light.VTAB_LIST_FILES, light.VTAB_REQUIRED


class ListDataset(Dataset):
    """Images listed as ``(path, label)`` pairs; items are ``(transform(image), label)``."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform=None):
        self.samples, self.classes, self.transform = samples, classes, transform
        self.targets = [t for _, t in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        image = default_loader(path)
        return (self.transform(image) if self.transform else image), target


@register_dataset("vtab1k")
class VTAB1k(light.VTAB1k):
    """One VTAB-1k task folder (see `manager.datasets.classes.VTAB1k`, which finds it and names
    its classes); here, the images."""

    def build(
        self, root, split: str, transform: Callable | None, download: bool, task=None, **options
    ) -> Dataset:
        if options:
            raise MgrError(f"vtab1k: unknown options {sorted(options)}")
        if download:
            raise MgrError(
                "vtab1k: cannot be downloaded; prepare the VTAB-1k folders and give their root",
                hint="pass --root DIR",
            )
        root = resolve_root(root)
        found = self.locate(root, task)
        if found is None:
            first = light.vtab_candidates(root, task)[0]
            missing = next(first / f for f in REQUIRED if not (first / f).is_file())
            raise MgrError(
                f"vtab1k: missing {missing} (expected a VTAB-1k task folder)",
                hint="pass --root DIR",
            )
        list_file = found / LIST_FILES[split]
        if not list_file.is_file():
            raise MgrError(f"vtab1k: missing {list_file} (needed for split {split!r})")
        samples, classes = read_list(list_file), self.classes(found)
        bad = next(((p, t) for p, t in samples if not 0 <= t < len(classes)), None)
        if bad:
            raise MgrError(f"vtab1k: {list_file}: label {bad[1]} outside 0..{len(classes) - 1}")
        absent = [p for p, _ in samples if not p.exists()]
        if absent:
            raise MgrError(f"vtab1k: missing {absent[0]} and {len(absent) - 1} more {split} images")
        return ListDataset(samples, classes, transform)
