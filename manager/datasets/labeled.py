"""`Labeled`: a subset or concatenation of data sets that keeps ``.classes`` and ``.targets``.

Apart from `manager.datasets.registry` because it is a torch ``Dataset``: the registry stays
light (``mgr task add`` imports it), and ``from manager.datasets.registry import Labeled`` still
works (the registry's module ``__getattr__``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import ConcatDataset, Dataset, Subset


class Labeled(Dataset):
    """A subset or concatenation of data sets that keeps ``.classes`` and ``.targets``."""

    def __init__(self, base: Dataset, classes: Sequence[str], targets: Sequence[int]):
        self.base, self.classes, self.targets = base, list(classes), list(targets)

    @classmethod
    def subset(cls, ds: Dataset, indices: Sequence[int]) -> Labeled:
        targets = ds.targets  # type: ignore[attr-defined]
        return cls(Subset(ds, list(indices)), ds.classes, [targets[i] for i in indices])  # type: ignore[attr-defined]

    @classmethod
    def concat(cls, parts: Sequence[Dataset]) -> Labeled:
        targets = [t for p in parts for t in p.targets]  # type: ignore[attr-defined]
        return cls(ConcatDataset(parts), parts[0].classes, targets)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        return self.base[index]
