"""Data-set registry: name -> kind, like timm's `create_model`, plus roots and known definitions.

Light: neither torch nor torchvision is imported here, so `describe` and `validate_dataset_spec`
(``mgr task add``) answer in milliseconds from the light kinds of `manager.datasets.classes`
(the class names and options of the built-in kinds, read from ``data/*.json`` and the folders).
The built-in kinds that open images (`manager.datasets.flowers` and the others, torch's) are
imported by `create_dataset` on first use.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import manager
from manager.errors import MgrError
from manager.specs import Option, check_options, split_spec

_PACKAGE = Path(manager.__file__).resolve().parent
# data/ ships in a wheel as manager/_data; in a checkout (editable install) it is the repo's data/.
INSTALLED = (_PACKAGE / "_data").is_dir()
DATA_DIR = _PACKAGE / "_data" if INSTALLED else _PACKAGE.parent / "data"

_REGISTRY: dict[str, type[DatasetKind]] = {}
ROOT_HINT = "pass --root DIR"  # what the CLI adds to "needs the data set on disk"
K = TypeVar("K", bound="type[DatasetKind]")


class DatasetKind:
    """One registered kind of data set; subclasses say how to find, describe and open it.

    A kind is stateless: ``locate`` finds it on disk, ``classes`` names its classes, ``build``
    opens one split. Options from the spec string (``name:key=value``) arrive as ``**options``,
    already checked against ``options`` (type and range of each key; unknown keys refused).
    """

    name: str = ""
    splits: tuple[str, ...] = ("train", "val", "test", "trainval")
    options: ClassVar[Mapping[str, Option | type]] = {}

    def locate(self, root: Path | None, **options: Any) -> Path | None:
        """Where the data set is on disk under ``root`` (None: not there)."""
        return None

    def classes(self, found: Path | None, **options: Any) -> list[str]:
        """Class names in label order, from disk when ``found`` else the known definition."""
        known = known_definition(self.name)
        if known is None:
            raise MgrError(
                f"{self.name}: class names need the data set on disk; give its root folder",
                hint=ROOT_HINT,
            )
        return list(known["classes"])

    def build(
        self,
        root: str | os.PathLike[str] | None,
        split: str,
        transform: Callable | None,
        download: bool,
        **options: Any,
    ) -> Any:
        """One split; ``root`` None means `default_root`. Missing data raises `MgrError`."""
        raise NotImplementedError


def known_options(**options: Option | type) -> Mapping[str, Option | type]:
    """A kind's ``options``, read-only: ``known_options(task=str)`` or ``Option(int, 6, 2, 12)``."""
    return MappingProxyType(options)


def register_dataset(name: str) -> Callable[[K], K]:
    """Class decorator: make a `DatasetKind` available to `create_dataset` under ``name``."""

    def wrap(cls: K) -> K:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _light() -> Mapping[str, type[DatasetKind]]:
    from manager.datasets.classes import LIGHT  # registers nothing: its own table

    return LIGHT


def _load_kinds() -> None:
    """Register the built-in kinds that open images (imports torch and torchvision)."""
    from manager.datasets import flowers, folder, pets, synthetic, vtab  # noqa: F401


def list_datasets() -> list[str]:
    """Registered data-set names, sorted."""
    return sorted(set(_REGISTRY) | set(_light()))


def _kind(spec: str, heavy: bool = True, **overrides: Any) -> tuple[DatasetKind, dict[str, Any]]:
    """The kind of `spec` and its checked options. ``heavy``: one that can `build` (loads the
    built-in kinds); else a registered kind if there is one, the light twin of a built-in
    kind otherwise (locate, classes and options only)."""
    name, options = split_spec(spec)
    if heavy:
        _load_kinds()
    cls = _REGISTRY.get(name) or _light().get(name)
    if cls is None:
        shown = name if len(name) <= 40 else name[:36] + "..."
        raise MgrError(f"unknown data set {shown!r}; known: {', '.join(list_datasets())}")
    kind = cls()
    return kind, check_options(name, {**options, **overrides}, kind.options)


def validate_dataset_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"synthetic:seed=3"`` -> ``("synthetic", {"seed": 3})``, or MgrError for an unknown data
    set, an unknown option (the known ones are listed) or a value of the wrong type or range.

    Cheap (nothing is read from disk), so ``mgr task add`` refuses a bad spec before it records
    anything that would only fail later in ``mgr train``.
    """
    kind, options = _kind(spec, heavy=False)
    return kind.name, options


def default_root() -> Path:
    """Where data sets are found or downloaded: ``$MGR_DATA_ROOT``, else the checkout's ``data/``.

    An installed package is never written to: there the default is ``<home>/cache/datasets``
    (the home from ``MGR_HOME``, else ``~/.mgr``).
    """
    env = os.environ.get("MGR_DATA_ROOT")
    if env:
        return Path(env).expanduser()
    if not INSTALLED:
        return DATA_DIR
    from manager.home import Home
    from manager.store.fs import Store

    return Store.of(Home.resolve()).cache / "datasets"


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    return Path(root).expanduser() if root is not None else default_root()


@cache
def known_definition(name: str) -> dict[str, Any] | None:
    """The definition shipped in ``data/<name>.json`` (class names etc.), or None."""
    path = DATA_DIR / f"{name}.json"
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def create_dataset(
    name: str,
    root: str | os.PathLike[str] | None,
    split: str,
    transform: Callable | None = None,
    *,
    download: bool = False,
    **options: Any,
) -> Any:
    """Open one split of a data set; the result has ``.classes`` and ``.targets``.

    ``name`` may carry options, ``"synthetic:num_classes=4"``; keyword ``options`` override them.
    Items are ``(image, label)`` with the PIL image passed through ``transform``.
    """
    kind, options = _kind(name, **options)
    if split not in kind.splits:
        raise MgrError(f"{kind.name}: no split {split!r}; splits: {', '.join(kind.splits)}")
    return kind.build(root, split, transform, download, **options)


def describe(
    name: str, root: str | os.PathLike[str] | None = None, **options: Any
) -> tuple[list[str], Path | None]:
    """Class names and where the data set was found (None: not on disk, known names used).

    ``root`` None looks in `default_root`. Reads no images and imports no torch, so it is cheap
    and works offline.
    """
    kind, options = _kind(name, heavy=False, **options)
    found = kind.locate(resolve_root(root), **options)
    classes = kind.classes(found, **options)
    if len(classes) < 2:  # a classifier of one class cannot be trained (nor measured)
        where = f" at {found}" if found is not None else ""
        raise MgrError(
            f"data set {name!r}{where} has {len(classes)} class(es): a task needs at least 2 "
            "(for an image folder: one sub-folder per class)"
        )
    return classes, found


def every_kth(targets: Sequence[int], k: int, picks: Sequence[int]) -> list[int]:
    """Indices whose rank within their own class, modulo ``k``, is in ``picks``.

    A deterministic, class-stratified split that needs no random state: with ``k=5`` and
    ``picks=(4,)`` every fifth image of each class is chosen.
    """
    seen: dict[int, int] = {}
    out = []
    for i, t in enumerate(targets):
        rank = seen.get(t, 0)
        seen[t] = rank + 1
        if rank % k in picks:
            out.append(i)
    return out


def dataset_folder(root: Path, folder: str) -> Path:
    """``root/folder``, or ``root`` itself when it already is that folder (torchvision layouts)."""
    return root if root.name == folder and not (root / folder).is_dir() else root / folder


def first_missing(base: Path, required: Sequence[str]) -> Path | None:
    """The first of ``required`` (paths under ``base``) that does not exist, or None."""
    return next((base / f for f in required if not (base / f).exists()), None)


def fetch_or_check(
    name: str, base: Path, required: Sequence[str], layout: str, fetch: Callable[[], Any] | None
) -> None:
    """Download with ``fetch`` (None: no download), then make sure every ``required`` path is
    under ``base``: `MgrError` naming a failed download or the first missing file."""
    if fetch is not None:
        try:
            fetch()
        except Exception as e:  # network and archive errors alike: one clear line
            raise MgrError(f"{name}: download to {base} failed: {e}") from None
    missing = first_missing(base, required)
    if missing is not None:
        raise MgrError(
            f"{name}: missing {missing} (expected {layout}; give its root or download=True)",
            hint="pass --root DIR or --download",
        )


def __getattr__(name: str) -> Any:
    # `Labeled` (a torch Dataset) lives in manager.datasets.labeled; still importable from here.
    if name == "Labeled":
        from manager.datasets.labeled import Labeled

        return Labeled
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
