"""Growing label sets through the real CLI: ``mgr task refresh``, a grown head, old versions.

A class added to an image folder sorts *between* the old ones ("aa" between "a" and "b"), so a
task that re-read its folders would renumber them; the label set instead appends it, the next
version's head grows (old rows from the warm start), and version 1 keeps answering with its two
classes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import TINY_SPEC, assert_clean_error
from continual_helpers import write_class, write_folder
from switch_helpers import fork_mgr, one_thread  # noqa: F401

from manager.datasets import create_dataset, describe

TRAIN = ("--epochs", "1", "--batch-size", "16")
COUNTS = {"train": 8, "val": 4, "test": 4}


def test_imagefolder_reads_classes_txt(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", {"000": 0, "001": 1}, {"train": 2})
    assert describe("imagefolder", root)[0] == ["000", "001"]
    (root / "classes.txt").write_text("airplane\nbird\n")
    assert describe("imagefolder", root)[0] == ["airplane", "bird"]
    ds = create_dataset("imagefolder", root, "train")
    assert ds.classes == ["airplane", "bird"] and sorted(set(ds.targets)) == [0, 1]
    (root / "classes.txt").write_text("airplane\n")
    home = tmp_path / "home"
    home.mkdir()
    bad = fork_mgr(
        home, "task", "add", "p", "--dataset", "imagefolder", "--root", str(root), ok=False
    )
    assert_clean_error(bad)
    assert "one name per folder" in bad.stderr


@pytest.mark.slow
def test_a_new_class_grows_the_head_and_old_versions_keep_theirs(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    write_folder(root, {"a": 0, "b": 1}, COUNTS)
    fork_mgr(home, "task", "add", "f", "--dataset", "imagefolder", "--root", str(root),
        "--backbone", TINY_SPEC, "--weights", "random")  # fmt: skip
    fork_mgr(home, "train", "f", *TRAIN)
    image = str(root / "test" / "a" / "000.png")
    before = fork_mgr(home, "predict", image, "--task", "f@1", "--json").json()

    write_class(root, "aa", 2, COUNTS)
    refused = fork_mgr(home, "train", "f", *TRAIN, ok=False)
    assert_clean_error(refused)
    assert (
        "not in its label set (aa)" in refused.stderr and "task refresh f --yes" in refused.stderr
    )
    shown = fork_mgr(home, "task", "refresh", "f")
    assert "1 new class(es) found: aa" in shown.stdout
    assert fork_mgr(home, "task", "show", "f", "--json").json()["class_names"] == ["a", "b"]
    done = fork_mgr(home, "task", "refresh", "f", "--yes", "--json").json()
    assert done["recorded"] and done["classes"] == ["a", "b", "aa"]  # appended: a, b keep 0, 1
    assert fork_mgr(home, "task", "refresh", "f", "--json").json()["new"] == []

    v2 = fork_mgr(home, "train", "f", *TRAIN, "--init", "champion", "--promote", "always", "--json")
    v2 = v2.json()
    assert v2["metrics"]["per_class_top1"].keys() == {"a", "b", "aa"}
    rows = {v["number"]: v for v in fork_mgr(home, "versions", "f", "--json").json()}
    lin = rows[2]["lineage"]
    assert lin["classes"] == ["a", "b", "aa"]
    assert (lin["init"]["head"], lin["init"]["head_rows_kept"]) == ("grown", 2)
    assert lin["data"]["train"]["per_class"] == {"a": 8, "b": 8, "aa": 8}
    assert rows[2]["changes"] == "+8 images, 1 new class"
    assert rows[1]["classes"] == ["a", "b"]

    # Each version answers with its own classes (the live files, then a fresh switch back).
    new = fork_mgr(home, "predict", image, "--task", "f@2", "--json", "--top-k", "5").json()
    assert {t["class"] for t in new["predictions"][0]["top"]} == {"a", "b", "aa"}
    old = fork_mgr(home, "predict", image, "--task", "f@1", "--json", "--top-k", "5").json()
    assert {t["class"] for t in old["predictions"][0]["top"]} == {"a", "b"}
    assert old["predictions"] == before["predictions"]  # unchanged by the growth

    from manager.switch.switcher import Switcher  # what serve and export answer with

    with Switcher(home) as sw:
        sw.switch("f", 1)
        assert sw.class_names == ["a", "b"] and sw.model.num_classes == 2
        sw.switch("f", 2)
        assert sw.class_names == ["a", "b", "aa"]

    # A class gone from the data stays unless --drop says otherwise.
    for split in COUNTS:
        shutil.rmtree(root / split / "b")
    kept = fork_mgr(home, "task", "refresh", "f")
    assert "1 class(es) no longer in the data, kept in the label set" in kept.stdout
    assert_clean_error(fork_mgr(home, "task", "refresh", "f", "--drop", ok=False))
    dropped = fork_mgr(home, "task", "refresh", "f", "--yes", "--drop", "--json").json()
    assert dropped["dropped"] == ["b"] and dropped["classes"] == ["a", "aa"]
    history = fork_mgr(home, "history", "--task", "f", "--json").json()
    assert [e["details"]["added"] for e in history if e["kind"] == "classes_refreshed"] == [
        ["aa"],
        [],
    ]


def test_vtab1k_classes_txt_grows_by_refresh(tmp_path: Path) -> None:
    """A VTAB-1k task names its classes in ``classes.txt``; a line added there is a new class."""
    from PIL import Image

    root = tmp_path / "vtab"
    root.mkdir()
    for k in range(3):
        Image.new("RGB", (8, 8), (80 * k, 0, 0)).save(root / f"{k}.png")
    (root / "train800val200.txt").write_text("0.png 0\n1.png 1\n")
    (root / "test.txt").write_text("0.png 0\n1.png 1\n")
    (root / "classes.txt").write_text("cat\ndog\n")
    home = tmp_path / "home"
    home.mkdir()
    fork_mgr(home, "task", "add", "v", "--dataset", "vtab1k", "--root", str(root))
    assert fork_mgr(home, "task", "refresh", "v", "--json").json()["new"] == []
    (root / "classes.txt").write_text("cat\ndog\nbird\n")
    (root / "train800val200.txt").write_text("0.png 0\n1.png 1\n2.png 2\n")
    shown = fork_mgr(home, "task", "refresh", "v")
    assert "1 new class(es) found: bird" in shown.stdout
    assert fork_mgr(home, "task", "refresh", "v", "--yes", "--json").json()["classes"] == [
        "cat",
        "dog",
        "bird",
    ]
    assert fork_mgr(home, "task", "show", "v", "--json").json()["class_names"] == [
        "cat",
        "dog",
        "bird",
    ]
