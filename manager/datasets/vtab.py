"""VTAB-1k in the folder layout the paper used: list files of ``relative/path label`` lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets.folder import default_loader

from manager.datasets.registry import DatasetKind, known_options, register_dataset, resolve_root
from manager.errors import MgrError

LIST_FILES = {
    "trainval": "train800val200.txt",
    "train": "train800.txt",
    "val": "val200.txt",
    "test": "test.txt",
}
REQUIRED = ("train800val200.txt", "test.txt")
CLASSES_FILE = "classes.txt"  # optional: one class name per line, in label order


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


def read_list(path: Path) -> list[tuple[Path, int]]:
    """Parse a VTAB list file; paths are relative to the file's folder."""
    samples = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rel, _, label = line.strip().rpartition(" ")
        if not rel.strip() or not (label.isascii() and label.isdigit()):
            raise MgrError(f"vtab1k: {path}:{n}: expected 'relative/path label'")
        samples.append((path.parent / rel.strip(), int(label)))
    return samples


def _candidates(root: Path, task: str | None) -> list[Path]:
    return [root / task, root / "vtab-1k" / task, root] if task else [root]


@register_dataset("vtab1k")
class VTAB1k(DatasetKind):
    """One VTAB-1k task folder: ``train800val200.txt`` and ``test.txt`` (plus ``train800.txt`` and
    ``val200.txt`` when present). Option ``task=NAME`` looks in ``<root>/NAME`` and
    ``<root>/vtab-1k/NAME``. Classes are ``class_<k>`` unless the folder has ``classes.txt``."""

    options = known_options(task=str)

    def locate(self, root: Path | None, task: str | None = None, **options) -> Path | None:
        if root is None:
            return None
        return next(
            (c for c in _candidates(root, task) if all((c / f).is_file() for f in REQUIRED)), None
        )

    def classes(self, found: Path | None, **options) -> list[str]:
        if found is None:
            raise MgrError("vtab1k: class names need the data set on disk; pass --root")
        if (found / CLASSES_FILE).is_file():
            return [
                ln.strip() for ln in (found / CLASSES_FILE).read_text().splitlines() if ln.strip()
            ]
        labels = [
            t
            for f in set(LIST_FILES.values())
            if (found / f).is_file()
            for _, t in read_list(found / f)
        ]
        return [f"class_{k}" for k in range(max(labels, default=-1) + 1)]

    def build(
        self, root, split: str, transform: Callable | None, download: bool, task=None, **options
    ) -> Dataset:
        if options:
            raise MgrError(f"vtab1k: unknown options {sorted(options)}")
        if download:
            raise MgrError(
                "vtab1k: cannot be downloaded; prepare the VTAB-1k folders and pass --root"
            )
        root = resolve_root(root)
        found = self.locate(root, task)
        if found is None:
            first = _candidates(root, task)[0]
            missing = next(first / f for f in REQUIRED if not (first / f).is_file())
            raise MgrError(
                f"vtab1k: missing {missing} (expected a VTAB-1k task folder; pass --root)"
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
