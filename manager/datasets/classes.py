"""The built-in data sets' class names and options, without torch: what ``mgr task add`` needs.

Each kind here is the light base of the one that opens images (`manager.datasets.flowers`,
``pets``, ``folder``, ``vtab``, ``synthetic``, which import torch and torchvision: seconds): its
``options``, ``locate`` and ``classes``, reading the shipped definitions (``data/*.json``),
annotation files and folders only. The full kinds subclass these and add only ``build``, so each
fact (a layout, a parser, a class name) is written once, here. `manager.datasets.registry.describe`
uses a light kind unless the full kind is already loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from manager.datasets.registry import (
    ROOT_HINT,
    DatasetKind,
    dataset_folder,
    first_missing,
    known_options,
)
from manager.errors import MgrError
from manager.specs import Option


class TorchvisionLayout(DatasetKind):
    """A data set in torchvision's layout: ``<root>/<folder>/`` holding every path of
    ``required`` (``root`` may also be that folder itself)."""

    folder: ClassVar[str] = ""
    required: ClassVar[tuple[str, ...]] = ()

    def locate(self, root: Path | None, **options: Any) -> Path | None:
        if root is None:
            return None
        base = dataset_folder(root, self.folder)
        return base if first_missing(base, self.required) is None else None


# -- flowers102 (manager.datasets.flowers) ------------------------------------------------------

FLOWERS_FOLDER = "flowers-102"
FLOWERS_REQUIRED = ("jpg", "imagelabels.mat", "setid.mat")


class Flowers(TorchvisionLayout):
    """Flowers-102: official split train 1,020 / val 1,020 / test 6,149; trainval = train + val."""

    name = "flowers102"
    folder, required = FLOWERS_FOLDER, FLOWERS_REQUIRED

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


class Pets(TorchvisionLayout):
    """Oxford-IIIT Pet: official trainval / test; train and val split trainval 4:1 per breed."""

    name = "pets"
    folder, required = PETS_FOLDER, PETS_REQUIRED

    def classes(self, found: Path | None, **options: Any) -> list[str]:
        return pet_breeds(found) if found else super().classes(None)


# -- imagefolder (manager.datasets.folder) ------------------------------------------------------

SPLIT_DIRS = ("train", "val", "test")
# Above this many pixels an image file is refused (PIL's own default is ~89 MP): a tiny file can
# claim 100000x100000 pixels and make the decoder allocate tens of gigabytes.
DEFAULT_MAX_PIXELS = 40_000_000
FOLDER_CLASSES_FILE = "classes.txt"  # optional, at the root: one name per class folder, in order


def class_dirs(folder: Path) -> list[str]:
    """The class folders of ``folder`` (hidden ones left out), sorted: label order."""
    return sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def is_split_tree(root: Path) -> bool:
    """Whether ``root`` holds split folders (``train/``, ``val/``, ``test/``), not classes."""
    return any((root / s).is_dir() for s in SPLIT_DIRS)


class Folder(DatasetKind):
    """Split folders where present; a missing ``val/`` is carved from ``train/`` (every fifth image
    of each class). A flat tree is split per class 60/20/20 by sorted file name.

    Options: ``skip_bad=true`` decodes every image once up front and leaves out the unreadable
    ones (one warning line); without it the first unreadable image stops with its name.
    ``max_pixels=N`` changes the decompression-bomb limit.
    """

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
        """Class folder names, or with ``classes.txt`` at the root its names (one per line, in
        the folders' sorted order: ``006`` answers as ``airplane``)."""
        if found is None:
            raise MgrError(
                "imagefolder: class names need the data set on disk; give its root folder",
                hint=ROOT_HINT,
            )
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
VTAB_CLASSES_FILE = "classes.txt"  # optional: one class name per line, in label order


def read_list(path: Path) -> list[tuple[Path, int]]:
    """Parse a VTAB list file (``relative/path label`` per line); paths are relative to the
    file's folder."""
    samples = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        rel, _, label = line.strip().rpartition(" ")
        if not rel.strip() or not (label.isascii() and label.isdigit()):
            raise MgrError(f"vtab1k: {path}:{n}: expected 'relative/path label'")
        samples.append((path.parent / rel.strip(), int(label)))
    return samples


def vtab_candidates(root: Path, task: str | None) -> list[Path]:
    """Where a VTAB-1k task folder may be under ``root``, in the order looked at."""
    return [root / task, root / "vtab-1k" / task, root] if task else [root]


class VTAB1k(DatasetKind):
    """One VTAB-1k task folder: ``train800val200.txt`` and ``test.txt`` (plus ``train800.txt`` and
    ``val200.txt`` when present). Option ``task=NAME`` looks in ``<root>/NAME`` and
    ``<root>/vtab-1k/NAME``. Classes are ``class_<k>`` unless the folder has ``classes.txt``."""

    name = "vtab1k"
    options = known_options(task=str)

    def locate(self, root: Path | None, task: str | None = None, **options: Any) -> Path | None:
        if root is None:
            return None
        return next(
            (
                c
                for c in vtab_candidates(root, task)
                if all((c / f).is_file() for f in VTAB_REQUIRED)
            ),
            None,
        )

    def classes(self, found: Path | None, **options: Any) -> list[str]:
        if found is None:
            raise MgrError(
                "vtab1k: class names need the data set on disk; give its root folder",
                hint=ROOT_HINT,
            )
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
            for _, t in read_list(found / f)
        ]
        return [f"class_{k}" for k in range(max(labels, default=-1) + 1)]


# -- synthetic (manager.datasets.synthetic) -----------------------------------------------------

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = ("red", "green", "blue", "yellow", "magenta")  # their RGB: manager.datasets.synthetic
TEXTURES = ("solid", "stripes", "dots")
MAX_CLASSES = 12  # (k%4, k%5, k%3) stays distinct far beyond; 12 keeps the set small
# The caps keep a typo from asking for terabytes: 12 x 10,000 images of 1024 px is already a lot
# for a generated set. Seeds span numpy's and torch's (non-negative int64).
SYNTHETIC_OPTIONS = known_options(
    num_classes=Option(int, 6, 2, MAX_CLASSES),
    per_class=Option(int, 32, 1, 10_000),
    img_size=Option(int, 32, 8, 1024),
    seed=Option(int, 0, 0, 2**63 - 1),
)


def synthetic_class_names(num_classes: int) -> list[str]:
    """Class ``k`` is a ``COLOURS[k % 5]`` ``TEXTURES[k % 3]`` ``SHAPES[k % 4]``."""
    return [f"{COLOURS[k % 5]} {TEXTURES[k % 3]} {SHAPES[k % 4]}" for k in range(num_classes)]


class Synthetic(DatasetKind):
    """Generated shapes; options ``num_classes`` (6, 2..12), ``per_class`` (32), ``img_size``
    (32), ``seed`` (0). Needs no root and nothing on disk."""

    name = "synthetic"
    options = SYNTHETIC_OPTIONS

    def classes(self, found: Path | None, **options: Any) -> list[str]:
        return synthetic_class_names(
            options.get("num_classes", SYNTHETIC_OPTIONS["num_classes"].default)
        )


LIGHT: dict[str, type[DatasetKind]] = {
    k.name: k for k in (Flowers, Pets, Folder, VTAB1k, Synthetic)
}
