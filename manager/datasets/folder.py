"""Any ImageFolder tree: ``<root>/{train,val,test}/<class>/*`` or a flat ``<root>/<class>/*``."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from manager.datasets import classes as light
from manager.datasets.classes import DEFAULT_MAX_PIXELS, class_dirs, is_split_tree
from manager.datasets.registry import Labeled, every_kth, register_dataset, resolve_root
from manager.errors import MgrError

# A flat tree is split per class by rank modulo 5: 3 train, 1 val, 1 test (60/20/20).
FLAT_PICKS = {"train": (0, 1, 2), "val": (3,), "test": (4,), "trainval": (0, 1, 2, 3)}
SKIP_HINT = "or skip unreadable images: imagefolder:skip_bad=true"
CLASSES_FILE = light.FOLDER_CLASSES_FILE


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_image(
    path: str | os.PathLike[str],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    hint: str = "",
    cli_hint: str | None = None,
) -> Image.Image:
    """Decode an image file to RGB; `MgrError` naming the file if it is unreadable or too large.

    ``hint`` ends the message (what to do, in the API's words); ``cli_hint`` is the error's
    ``hint``, which only the CLI prints (flags).

    The size is checked from the header, before any pixel is decoded; while decoding, PIL's own
    decompression-bomb limit is `max_pixels` with its warning made an error, for formats whose
    frames or tiles are sized only then.
    """
    hint = f"; {hint}" if hint else ""
    previous = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # the header is read by us, with a better message
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise MgrError(
                        f"refusing image {path}: {w}x{h} is {w * h:,} pixels, over the limit of "
                        f"{max_pixels:,} (a decompression bomb?){hint}",
                        hint=cli_hint,
                    )
                Image.MAX_IMAGE_PIXELS = max_pixels
                im.load()
                return im.convert("RGB")
    except MgrError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MgrError(f"refusing image {path}: {_reason(exc)}{hint}", hint=cli_hint) from None
    except FileNotFoundError:
        raise MgrError(f"image {path} not found") from None
    except Exception as exc:  # truncated or corrupt files raise many kinds of errors
        raise MgrError(f"cannot read image {path}: {_reason(exc)}{hint}", hint=cli_hint) from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _dataset_loader(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    # Module level (not a lambda) so the data set pickles into DataLoader workers.
    return read_image(path, max_pixels, hint=f"fix or remove it, {SKIP_HINT}")


def _is_bad(path: str, max_pixels: int) -> bool:
    try:
        read_image(path, max_pixels)
    except MgrError:
        return True
    return False


# Folders already scanned in this process, so train/val/test of one flat tree warn once.
_SCANNED: dict[tuple[str, int], frozenset[str]] = {}


def _bad_files(folder: Path, paths: list[str], max_pixels: int) -> frozenset[str]:
    key = (str(folder), max_pixels)
    if key not in _SCANNED:
        # Decoding releases the GIL, so threads speed up the scan.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            flags = list(pool.map(partial(_is_bad, max_pixels=max_pixels), paths))
        bad = frozenset(p for p, b in zip(paths, flags, strict=True) if b)
        _SCANNED[key] = bad
        if bad:
            print(
                f"warning: imagefolder: skipped {len(bad)} unreadable image(s) of {len(paths)} "
                f"in {folder} (e.g. {min(bad)})",
                file=sys.stderr,
            )
    return _SCANNED[key]


class FixedClassesFolder(ImageFolder):
    """An ImageFolder whose classes are given, so val/test use train's label numbering."""

    def __init__(
        self,
        root: Path,
        classes: list[str],
        transform: Callable | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        self._fixed = classes  # read by find_classes during ImageFolder.__init__
        loader = partial(_dataset_loader, max_pixels=max_pixels)
        super().__init__(str(root), transform=transform, loader=loader, allow_empty=True)

    def drop(self, paths: frozenset[str]) -> None:
        """Leave the files in `paths` out (``samples``, ``imgs`` and ``targets`` stay aligned)."""
        self.samples = [s for s in self.samples if s[0] not in paths]
        self.imgs = self.samples
        self.targets = [t for _, t in self.samples]

    def find_classes(self, directory):
        return self._fixed, {c: i for i, c in enumerate(self._fixed)}


@register_dataset("imagefolder")
class Folder(light.Folder):
    """Any ImageFolder tree (see `manager.datasets.classes.Folder`, which finds it, names its
    classes and says how it splits); here, the images."""

    def build(
        self, root, split: str, transform: Callable | None, download: bool, **options
    ) -> Dataset:
        ds = self._build(root, split, transform, download, **options)
        found = self.locate(resolve_root(root))
        if found is not None and (found / CLASSES_FILE).is_file():
            ds.classes = self.classes(found)  # labels stay the folders' sorted order
        return ds

    def _build(
        self, root, split: str, transform: Callable | None, download: bool, **options
    ) -> Dataset:
        # Types and ranges were checked against `options` when the spec was parsed.
        opts = {
            "skip_bad": bool(options.pop("skip_bad", False)),
            "max_pixels": int(options.pop("max_pixels", DEFAULT_MAX_PIXELS)),
        }
        if options:
            raise MgrError(f"imagefolder: unknown options {sorted(options)}")
        if download:
            raise MgrError(
                "imagefolder: cannot be downloaded; give its root folder", hint="pass --root DIR"
            )
        root = resolve_root(root)
        if not root.is_dir():
            raise MgrError(
                f"imagefolder: missing {root} (expected <root>/<class>/* or <root>/train/<class>/*)"
            )
        if is_split_tree(root) and not (root / "train").is_dir():
            raise MgrError(f"imagefolder: missing {root / 'train'} (split folders need train/)")
        found = self.locate(root)
        if found is None:
            raise MgrError(f"imagefolder: no class folders in {root}")
        classes = class_dirs(found / "train" if is_split_tree(found) else found)
        if not is_split_tree(root):
            ds = self._open(root, classes, transform, **opts)
            return Labeled.subset(ds, every_kth(ds.targets, 5, FLAT_PICKS[split]))
        if split == "trainval":
            parts = [self._build(root, s, transform, False, **opts) for s in ("train", "val")]
            return Labeled.concat(parts)
        folder = root / split
        if split == "test" and not folder.is_dir():
            raise MgrError(f"imagefolder: missing {folder} (needed for split 'test')")
        if split != "train" and folder.is_dir():
            return self._open(folder, classes, transform, **opts)
        ds = self._open(root / "train", classes, transform, **opts)
        if (root / "val").is_dir():
            return ds
        # No val/: hold out every fifth image of each train class, and train on the rest.
        return Labeled.subset(
            ds, every_kth(ds.targets, 5, (4,) if split == "val" else (0, 1, 2, 3))
        )

    @staticmethod
    def _open(
        folder: Path,
        classes: list[str],
        transform: Callable | None,
        skip_bad: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> ImageFolder:
        extra = sorted(set(class_dirs(folder)) - set(classes))
        if extra:
            raise MgrError(
                f"imagefolder: {folder} has classes not in train/: {', '.join(extra[:5])}"
            )
        ds = FixedClassesFolder(folder, classes, transform, max_pixels)
        if skip_bad and len(ds):
            ds.drop(_bad_files(folder, [p for p, _ in ds.samples], max_pixels))
        if not len(ds):
            raise MgrError(f"imagefolder: no readable images in {folder}")
        return ds
