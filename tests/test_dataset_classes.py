"""The light kinds of the built-in data sets (`manager.datasets.classes`, no torch) find the data,
name its classes and refuse bad layouts (issue 20: ``mgr task add`` reads class names without
importing torch); the kinds that open images are these plus ``build``, so they answer alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from manager.datasets import classes as light
from manager.datasets.registry import _REGISTRY, _kind, _load_kinds, known_definition
from manager.errors import MgrError


def _answer(kind: Any, root: Path | None, **options: Any) -> tuple[str, Any]:
    """What a kind says of `root`: where it found the data and its classes, or its refusal."""
    try:
        found = kind.locate(root, **options)
        return "ok", (found, kind.classes(found, **options))
    except MgrError as exc:
        return "error", str(exc)


def _write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _trees(tmp: Path) -> dict[str, list[tuple[Path | None, dict[str, Any]]]]:
    """Data laid out on disk per kind, good and bad, and the options to ask with."""
    fl = tmp / "fl"
    for f in ("jpg/x.jpg", "imagelabels.mat", "setid.mat"):
        _write(fl / "flowers-102" / f)
    fl_names = tmp / "fl-names" / "flowers-102"
    for f in ("jpg/x.jpg", "imagelabels.mat", "setid.mat"):
        _write(fl_names / f)
    _write(
        fl_names / "cat_to_name.json", "{" + ",".join(f'"{i}": "f{i}"' for i in range(1, 103)) + "}"
    )
    fl_bad = tmp / "fl-bad" / "flowers-102"
    for f in ("jpg/x.jpg", "imagelabels.mat", "setid.mat"):
        _write(fl_bad / f)
    _write(fl_bad / "cat_to_name.json", '{"1": "one"}')

    pets = tmp / "pets" / "oxford-iiit-pet"
    _write(pets / "images" / "a.jpg")
    _write(
        pets / "annotations" / "trainval.txt", "#c\nAbyssinian_1 1 1 1\ngreat_pyrenees_3 2 2 1\n"
    )
    _write(pets / "annotations" / "test.txt", "american_bulldog_2 3 2 2\n")
    pets_bad = tmp / "pets-bad" / "oxford-iiit-pet"
    _write(pets_bad / "images" / "a.jpg")
    _write(pets_bad / "annotations" / "trainval.txt", "Abyssinian_1 4 1 1\n")
    _write(pets_bad / "annotations" / "test.txt", "garbage\n")

    split = tmp / "split"
    for c in ("cat", "dog", ".hidden"):
        _write(split / "train" / c / "1.png")
    flat = tmp / "flat"
    for c in ("b", "a", "c"):
        _write(flat / c / "1.png")
    named = tmp / "named"
    for c in ("001", "002"):
        _write(named / c / "1.png")
    _write(named / "classes.txt", "airplane\nbird\n")
    misnamed = tmp / "misnamed"
    for c in ("001", "002"):
        _write(misnamed / c / "1.png")
    _write(misnamed / "classes.txt", "airplane\n")

    vt = tmp / "vt" / "vtab-1k" / "dtd"
    _write(vt / "train800val200.txt", "a.jpg 0\nb.jpg 4\n")
    _write(vt / "test.txt", "c.jpg 2\n")
    vt_named = tmp / "vt-named"
    _write(vt_named / "train800val200.txt", "a.jpg 0\n")
    _write(vt_named / "test.txt", "c.jpg 1\n")
    _write(vt_named / "classes.txt", "zero\none\n")
    vt_bad = tmp / "vt-bad"
    _write(vt_bad / "train800val200.txt", "no-label-here\n")
    _write(vt_bad / "test.txt", "")

    return {
        "flowers102": [(None, {}), (tmp / "none", {}), (fl, {}), (fl_names.parent, {}),
                       (fl_names, {}), (fl_bad.parent, {})],
        "pets": [(None, {}), (tmp / "none", {}), (pets.parent, {}), (pets_bad.parent, {})],
        "imagefolder": [(None, {}), (tmp / "none", {}), (split, {}), (flat, {"skip_bad": True}),
                        (named, {}), (misnamed, {}), (tmp / "fl", {})],
        "vtab1k": [(None, {}), (tmp / "vt", {"task": "dtd"}), (tmp / "vt", {}),
                   (vt_named, {}), (vt_bad, {})],
        "synthetic": [(None, {}), (None, {"num_classes": 2}), (None, {"num_classes": 12}),
                      (tmp, {"num_classes": 5, "seed": 3})],
    }  # fmt: skip


def test_each_built_in_kind_is_its_light_kind_plus_build() -> None:
    """Where the data is, its classes and its options are written once, in the light kind; the
    kind that opens images inherits them and adds only ``build``."""
    _load_kinds()
    assert set(light.LIGHT) <= set(_REGISTRY)
    assert set(light.LIGHT) == {"flowers102", "pets", "imagefolder", "vtab1k", "synthetic"}
    for name, base in light.LIGHT.items():
        full = _REGISTRY[name]
        assert issubclass(full, base) and full is not base, name
        assert {"locate", "classes", "options"}.isdisjoint(vars(full)), name
        assert "build" in vars(full) and "build" not in vars(base), name


def _expected(tmp: Path) -> dict[str, list[tuple[str, Any]]]:
    """Per kind, in the order of `_trees`: ("ok", (found, classes)) or ("error", a phrase)."""
    known = {n: list(known_definition(n)["classes"]) for n in ("flowers102", "pets")}
    on_disk = "class names need the data set on disk; give its root folder"
    return {
        "flowers102": [("ok", (None, known["flowers102"])), ("ok", (None, known["flowers102"])),
                       ("ok", (tmp / "fl" / "flowers-102", known["flowers102"])),
                       ("ok", (tmp / "fl-names" / "flowers-102", [f"f{i}" for i in range(1, 103)])),
                       ("ok", (tmp / "fl-names" / "flowers-102", [f"f{i}" for i in range(1, 103)])),
                       ("error", "has no entry '2' (expected 1..102)")],
        "pets": [("ok", (None, known["pets"])), ("ok", (None, known["pets"])),
                 ("ok", (tmp / "pets" / "oxford-iiit-pet",
                         ["Abyssinian", "Great Pyrenees", "American Bulldog"])),
                 ("error", "expected 'NAME CLASS_ID SPECIES BREED_ID'")],
        "imagefolder": [("error", on_disk), ("error", on_disk),
                        ("ok", (tmp / "split", ["cat", "dog"])),
                        ("ok", (tmp / "flat", ["a", "b", "c"])),
                        ("ok", (tmp / "named", ["airplane", "bird"])),
                        ("error", "names 1 distinct classes, the data has 2 class folders"),
                        ("ok", (tmp / "fl", ["flowers-102"]))],
        "vtab1k": [("error", on_disk),
                   ("ok", (tmp / "vt" / "vtab-1k" / "dtd", [f"class_{k}" for k in range(5)])),
                   ("error", on_disk), ("ok", (tmp / "vt-named", ["zero", "one"])),
                   ("error", "expected 'relative/path label'")],
        "synthetic": [("ok", (None, light.synthetic_class_names(6))),
                      ("ok", (None, ["red solid circle", "green stripes square"])),
                      ("ok", (None, light.synthetic_class_names(12))),
                      ("ok", (None, light.synthetic_class_names(5)))],
    }  # fmt: skip


@pytest.mark.parametrize("name", sorted(light.LIGHT))
def test_a_light_kind_finds_names_and_refuses(tmp_path: Path, name: str) -> None:
    cases, expected = _trees(tmp_path)[name], _expected(tmp_path)[name]
    assert len(cases) == len(expected)
    for (root, options), (outcome, want) in zip(cases, expected, strict=True):
        got, answer = _answer(light.LIGHT[name](), root, **options)
        assert got == outcome, (name, root, options, answer)
        if outcome == "ok":
            assert answer == want, (name, root, options)
        else:
            assert want in answer and "--" not in answer, (name, root, options, answer)


def test_a_refusal_carries_the_clis_hint() -> None:
    for name in ("imagefolder", "vtab1k"):
        with pytest.raises(MgrError, match="need the data set on disk") as e:
            light.LIGHT[name]().classes(None)
        assert e.value.hint == "pass --root DIR", name


def test_describe_uses_the_light_kind_until_the_full_kind_is_loaded() -> None:
    """In a fresh process (tests/test_catalog_imports.py checks the imports), `_kind` without
    ``heavy`` gives the light kind; once loaded, the registered kind (a user's own kind wins)."""
    kind, options = _kind("synthetic:num_classes=3", heavy=False)
    assert options == {"num_classes": 3}
    assert kind.classes(None, **options) == light.synthetic_class_names(3)
    with pytest.raises(MgrError, match="unknown data set 'nope'; known: flowers102, imagefolder"):
        _kind("nope", heavy=False)
    with pytest.raises(MgrError, match="num_classes must be"):
        _kind("synthetic:num_classes=99", heavy=False)
