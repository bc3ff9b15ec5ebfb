"""The built-in data sets' class names and options, without torch: what ``mgr task add`` needs.

Each kind here is the light twin of the one that opens images (`manager.datasets.flowers`,
``pets``, ``folder``, ``vtab``, ``synthetic``, which import torch and torchvision: seconds): the
same ``options``, ``locate`` and ``classes``, reading the shipped definitions (``data/*.json``),
annotation files and folders only. `manager.datasets.registry.describe` uses a twin unless the
full kind is already loaded; ``tests/test_dataset_classes.py`` checks that both answer alike on
the same data, so a change to one that is not made to the other fails there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from manager.datasets.registry import (
    DatasetKind,
    dataset_folder,
    first_missing,
    known_options,
)
from manager.errors import MgrError
from manager.specs import Option

# -- flowers102 (manager.datasets.flowers) ------------------------------------------------------

FLOWERS_FOLDER = "flowers-102"
FLOWERS_REQUIRED = ("jpg", "imagelabels.mat", "setid.mat")


class Flowers(DatasetKind):
    name = "flowers102"

    def locate(self, root: Path | None, **options: Any) -> Path | None:
        if root is None:
            return None
        base = dataset_folder(root, FLOWERS_FOLDER)
        return base if first_missing(base, FLOWERS_REQUIRED) is None else None

    def classes(self, found: Path | None, **options: Any) -> list[str]:
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


# -- pets (manager.datasets.pets) ---------------------------------------------------------------

PETS_FOLDER = "oxford-iiit-pet"
PETS_REQUIRED = ("images", "annotations/trainval.txt", "annotations/test.txt")


def pet_breeds(base: Path) -> list[str]:
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


class Pets(DatasetKind):
    name = "pets"

    def locate(self, root: Path | None, **options: Any) -> Path | None:
        if root is None:
            return None
        base = dataset_folder(root, PETS_FOLDER)
        return base if first_missing(base, PETS_REQUIRED) is None else None

    def classes(self, found: Path | None, **options: Any) -> list[str]:
        return pet_breeds(found) if found else super().classes(None)


# -- imagefolder (manager.datasets.folder) ------------------------------------------------------

SPLIT_DIRS = ("train", "val", "test")
DEFAULT_MAX_PIXELS = 40_000_000
FOLDER_CLASSES_FILE = "classes.txt"


def class_dirs(folder: Path) -> list[str]:
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def is_split_tree(root: Path) -> bool:
    return any((root / s).is_dir() for s in SPLIT_DIRS)


class Folder(DatasetKind):
    name = "imagefolder"
    options = known_options(
        skip_bad=Option(bool, False, help="leave unreadable images out (one warning line)"),
        max_pixels=Option(int, DEFAULT_MAX_PIXELS, 1, None, "refuse larger images"),
    )

    def locate(self, root: Path | None, **options: Any) -> Path | None:
        if root is None or not root.is_dir():
            return None
        top = root / "train" if is_split_tree(root) else root
        return root if top.is_dir() and class_dirs(top) else None

    def classes(self, found: Path | None, **options: Any) -> list[str]:
        if found is None:
            raise MgrError("imagefolder: class names need the data set on disk; pass --root")
        dirs = class_dirs(found / "train" if is_split_tree(found) else found)
        listed = found / FOLDER_CLASSES_FILE
        if not listed.is_file():
            return dirs
        try:
            names = [ln.strip() for ln in listed.read_text("utf-8").splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise MgrError(f"imagefolder: cannot read {listed}: {exc}") from None
        if len(names) != len(dirs) or len(set(names)) != len(names):
            raise MgrError(
                f"imagefolder: {listed} names {len(names)} distinct classes, the data has "
                f"{len(dirs)} class folders; one name per folder, in their sorted order"
            )
        return names


# -- vtab1k (manager.datasets.vtab) -------------------------------------------------------------

VTAB_LIST_FILES = {
    "trainval": "train800val200.txt",
    "train": "train800.txt",
    "val": "val200.txt",
    "test": "test.txt",
}
VTAB_REQUIRED = ("train800val200.txt", "test.txt")
VTAB_CLASSES_FILE = "classes.txt"


def vtab_labels(path: Path) -> list[int]:
    """The labels of a VTAB list file (``relative/path label`` per line)."""
    labels = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rel, _, label = line.strip().rpartition(" ")
        if not rel.strip() or not (label.isascii() and label.isdigit()):
            raise MgrError(f"vtab1k: {path}:{n}: expected 'relative/path label'")
        labels.append(int(label))
    return labels


class VTAB1k(DatasetKind):
    name = "vtab1k"
    options = known_options(task=str)

    def locate(self, root: Path | None, task: str | None = None, **options: Any) -> Path | None:
        if root is None:
            return None
        candidates = [root / task, root / "vtab-1k" / task, root] if task else [root]
        return next((c for c in candidates if all((c / f).is_file() for f in VTAB_REQUIRED)), None)

    def classes(self, found: Path | None, **options: Any) -> list[str]:
        if found is None:
            raise MgrError("vtab1k: class names need the data set on disk; pass --root")
        if (found / VTAB_CLASSES_FILE).is_file():
            return [
                ln.strip()
                for ln in (found / VTAB_CLASSES_FILE).read_text().splitlines()
                if ln.strip()
            ]
        labels = [
            t
            for f in set(VTAB_LIST_FILES.values())
            if (found / f).is_file()
            for t in vtab_labels(found / f)
        ]
        return [f"class_{k}" for k in range(max(labels, default=-1) + 1)]


# -- synthetic (manager.datasets.synthetic) -----------------------------------------------------

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "magenta")
TEXTURES = ("solid", "stripes", "dots")
MAX_CLASSES = 12
SYNTHETIC_OPTIONS = known_options(
    num_classes=Option(int, 6, 2, MAX_CLASSES),
    per_class=Option(int, 32, 1, 10_000),
    img_size=Option(int, 32, 8, 1024),
    seed=Option(int, 0, 0, 2**63 - 1),
)


def synthetic_class_names(num_classes: int) -> list[str]:
    return [f"{COLOURS[k % 5]} {TEXTURES[k % 3]} {SHAPES[k % 4]}" for k in range(num_classes)]


class Synthetic(DatasetKind):
    name = "synthetic"
    options = SYNTHETIC_OPTIONS

    def classes(self, found: Path | None, **options: Any) -> list[str]:
        return synthetic_class_names(
            options.get("num_classes", SYNTHETIC_OPTIONS["num_classes"].default)
        )


LIGHT: dict[str, type[DatasetKind]] = {
    k.name: k for k in (Flowers, Pets, Folder, VTAB1k, Synthetic)
}
