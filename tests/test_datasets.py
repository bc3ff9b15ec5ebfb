"""Data sets: real Flowers-102 and Pets, VTAB-1k and ImageFolder trees, the synthetic set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from manager.datasets import (
    DATA_DIR,
    create_dataset,
    default_root,
    describe,
    eval_transform,
    known_definition,
    list_datasets,
    transform_for,
)
from manager.errors import MgrError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
T32 = eval_transform(32, MEAN, STD)


@pytest.fixture
def empty_default_root(tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "data-root"
    root.mkdir()
    monkeypatch.setenv("MGR_DATA_ROOT", str(root))
    return root


def _png(path: Path, colour: tuple[int, int, int], size: int = 12) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)


def test_registry_and_definitions():
    assert list_datasets() == ["flowers102", "imagefolder", "pets", "synthetic", "vtab1k"]
    with pytest.raises(MgrError, match="unknown data set 'cifar'; known: flowers102, imagefolder"):
        create_dataset("cifar", None, "train")
    with pytest.raises(
        MgrError, match="pets: no split 'trainval2'; splits: train, val, test, trainval"
    ):
        create_dataset("pets", None, "trainval2")
    assert len(known_definition("flowers102")["classes"]) == 102
    assert len(known_definition("pets")["classes"]) == 37
    assert Path(__file__).resolve().parents[1] / "data" == DATA_DIR


def test_default_root(monkeypatch, tmp_path: Path):
    monkeypatch.delenv("MGR_DATA_ROOT", raising=False)
    assert default_root() == DATA_DIR
    monkeypatch.setenv("MGR_DATA_ROOT", str(tmp_path))
    assert default_root() == tmp_path


def test_describe_without_data_gives_known_names(empty_default_root: Path):
    flowers, where = describe("flowers102", None)
    assert where is None and len(flowers) == 102 and flowers[0] == "pink primrose"
    pets, where = describe("pets", None)
    assert where is None and len(pets) == 37 and pets[:2] == ["Abyssinian", "American Bulldog"]
    with pytest.raises(MgrError, match="need the data set on disk"):
        describe("vtab1k", None)


def test_missing_files_are_named(tmp_path: Path):
    base = tmp_path / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    (base / "imagelabels.mat").write_bytes(b"")
    with pytest.raises(MgrError, match=r"missing .*flowers-102/setid.mat") as e:
        create_dataset("flowers102", tmp_path, "train")
    assert str(tmp_path / "flowers-102" / "setid.mat") in str(e.value)
    assert "--" not in str(e.value) and "download=True" in str(e.value)  # the API's words
    assert e.value.hint == "pass --root DIR or --download"  # the CLI's, printed after it
    (base / "setid.mat").write_bytes(b"not a mat file")
    with pytest.raises(MgrError, match="checksum"):
        create_dataset("flowers102", tmp_path, "train")
    pet = tmp_path / "oxford-iiit-pet"
    (pet / "images").mkdir(parents=True)
    (pet / "annotations").mkdir()
    (pet / "annotations" / "trainval.txt").write_text("a_1 1 1 1\n")
    with pytest.raises(MgrError, match=r"missing .*annotations/test.txt"):
        create_dataset("pets", pet, "test")


def test_flowers_real(assets: Path):
    sizes = {"train": 1020, "val": 1020, "test": 6149, "trainval": 2040}
    for split, n in sizes.items():
        ds = create_dataset("flowers102", assets, split, T32)
        assert len(ds) == n and len(ds.targets) == n
        assert len(ds.classes) == 102
    assert set(ds.targets) == set(range(102))
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 102
    # download=True with the data present checks it and touches no network
    assert len(create_dataset("flowers102", assets, "val", download=True)) == 1020
    # root may also be the flowers-102 folder itself
    assert len(create_dataset("flowers102", assets / "flowers-102", "val")) == 1020
    names, where = describe("flowers102", assets)
    assert where == assets / "flowers-102"
    cat = json.loads((assets / "flowers-102" / "cat_to_name.json").read_text())
    assert names == [cat[str(i)] for i in range(1, 103)]


def test_pets_real(assets: Path):
    sizes = {"trainval": 222, "test": 148, "train": 185, "val": 37}
    for split, n in sizes.items():
        ds = create_dataset("pets", assets, split, T32)
        assert len(ds) == n and len(ds.targets) == n
        assert ds.classes == known_definition("pets")["classes"]
        assert set(ds.targets) == set(range(37))
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and 0 <= y < 37
    assert len(create_dataset("pets", assets, "test", download=True)) == 148
    names, where = describe("pets", assets / "oxford-iiit-pet")
    assert where == assets / "oxford-iiit-pet" and len(names) == 37


def test_vtab1k_folder(tmp_path: Path):
    root = tmp_path / "vtab-1k" / "caltech101"
    lines = {"train800": [], "val200": [], "test": []}
    for i in range(12):
        label = i % 3
        split = ("train800", "val200", "test")[i % 4 % 3]
        _png(root / "images" / f"{i}.png", (80 * label, 10, 200))
        lines[split].append(f"images/{i}.png {label}")
    for name, ls in lines.items():
        (root / f"{name}.txt").write_text("\n".join(ls) + "\n")
    (root / "train800val200.txt").write_text("\n".join(lines["train800"] + lines["val200"]) + "\n")

    ds = create_dataset("vtab1k", root, "trainval", T32)
    assert len(ds) == len(lines["train800"]) + len(lines["val200"])
    assert ds.classes == ["class_0", "class_1", "class_2"]
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == ds.targets[0]
    assert len(create_dataset("vtab1k", root, "test")) == len(lines["test"])
    # task=NAME finds the folder under a parent
    assert len(create_dataset("vtab1k:task=caltech101", tmp_path, "train")) == len(
        lines["train800"]
    )
    assert describe("vtab1k", root) == (["class_0", "class_1", "class_2"], root)

    (root / "classes.txt").write_text("faces\nleopards\nmotorbikes\n")
    assert create_dataset("vtab1k", root, "val").classes == ["faces", "leopards", "motorbikes"]
    (root / "val200.txt").unlink()
    with pytest.raises(MgrError, match=r"missing .*val200.txt"):
        create_dataset("vtab1k", root, "val")
    with pytest.raises(MgrError, match=r"missing .*train800val200.txt"):
        create_dataset("vtab1k", tmp_path, "train")
    (root / "test.txt").write_text("images/0.png\n")
    with pytest.raises(MgrError, match=r"test\.txt:1: expected 'relative/path label'"):
        create_dataset("vtab1k", root, "test")


def test_imagefolder_split_tree(tmp_path: Path):
    colours = {"cat": (200, 0, 0), "dog": (0, 200, 0), "emu": (0, 0, 200)}
    for c, rgb in colours.items():
        for i in range(5):
            _png(tmp_path / "train" / c / f"{i}.png", rgb)
        _png(tmp_path / "test" / c / "0.png", rgb)
    _png(tmp_path / "val" / "dog" / "0.png", colours["dog"])  # a val split missing classes

    assert describe("imagefolder", tmp_path) == (["cat", "dog", "emu"], tmp_path)
    train = create_dataset("imagefolder", tmp_path, "train", T32)
    assert len(train) == 15 and train.classes == ["cat", "dog", "emu"]
    val = create_dataset("imagefolder", tmp_path, "val")
    assert len(val) == 1 and val.targets == [1]  # train's numbering, not val's own
    assert val[0][0].getpixel((0, 0)) == colours["dog"]
    assert len(create_dataset("imagefolder", tmp_path, "trainval")) == 16
    assert len(create_dataset("imagefolder", tmp_path, "test")) == 3

    # without val/: every fifth image of each class is held out
    for f in (tmp_path / "val").rglob("*.png"):
        f.unlink()
    (tmp_path / "val" / "dog").rmdir()
    (tmp_path / "val").rmdir()
    train = create_dataset("imagefolder", tmp_path, "train")
    val = create_dataset("imagefolder", tmp_path, "val")
    assert (len(train), len(val)) == (12, 3) and sorted(val.targets) == [0, 1, 2]

    _png(tmp_path / "test" / "yak" / "0.png", (9, 9, 9))
    with pytest.raises(MgrError, match="classes not in train/: yak"):
        create_dataset("imagefolder", tmp_path, "test")


def test_imagefolder_flat_tree(tmp_path: Path):
    for c in ("a", "b"):
        for i in range(10):
            _png(tmp_path / c / f"{i:02d}.png", (i * 20, 0, 0))
    sizes = {s: len(create_dataset("imagefolder", tmp_path, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 12, "val": 4, "test": 4}
    assert len(create_dataset("imagefolder", tmp_path, "trainval")) == 16
    with pytest.raises(MgrError, match=r"missing .*nowhere"):
        create_dataset("imagefolder", tmp_path / "nowhere", "train")


def test_synthetic_is_deterministic_and_learnable_looking():
    a = create_dataset("synthetic", None, "train", num_classes=6, per_class=8)
    b = create_dataset("synthetic:num_classes=6,per_class=8", None, "train")
    assert len(a) == 48 and a.classes == b.classes and len(set(a.classes)) == 6
    assert a.targets[:7] == [0, 1, 2, 3, 4, 5, 0]
    img, label = a[7]
    assert img.size == (32, 32) and label == 1
    to_t = eval_transform(32, (0, 0, 0), (1, 1, 1))
    assert torch.equal(to_t(a[7][0]), to_t(b[7][0]))
    test = create_dataset("synthetic", None, "test", num_classes=6, per_class=8)
    assert not torch.equal(to_t(a[7][0]), to_t(test[7][0]))  # splits are different images

    # class means differ clearly from one another
    x = torch.stack([to_t(a[i][0]) for i in range(len(a))])
    y = torch.tensor(a.targets)
    means = torch.stack([x[y == k].mean(0) for k in range(6)])
    dist = torch.cdist(means.flatten(1), means.flatten(1))
    assert dist[~torch.eye(6, dtype=torch.bool)].min() > 1.0
    colour = means.mean((2, 3))
    assert torch.cdist(colour, colour)[~torch.eye(6, dtype=torch.bool)].min() > 0.02

    trainval = create_dataset("synthetic", None, "trainval", num_classes=3, per_class=2)
    assert len(trainval) == 12 and trainval.targets == [0, 1, 2] * 4
    assert describe("synthetic:num_classes=4", None) == (
        [*trainval.classes, "yellow solid cross"],
        None,
    )
    with pytest.raises(MgrError, match=r"num_classes must be 2\.\.12"):
        create_dataset("synthetic", None, "train", num_classes=40)
    with pytest.raises(MgrError, match="unknown options"):
        create_dataset("synthetic:colours=3", None, "train")


def test_transform_for_follows_the_model():
    from conftest import tiny_vit

    model = tiny_vit()
    img = create_dataset("synthetic", None, "val", per_class=1)[0][0]
    assert transform_for(model)(img).shape == (3, 32, 32)
