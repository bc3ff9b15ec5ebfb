"""Data lineage: the fingerprint, what a version records, the diff vs the parent, --if-changed.

Through the real CLI (the fork server) on a tiny image folder: the first version records its
data; ``--if-changed`` trains nothing on unchanged data, and trains after a file is added; the
new version's lineage diff says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY_SPEC
from continual_helpers import write_class, write_folder
from switch_helpers import fork_mgr, one_thread  # noqa: F401

from manager.catalog.lineage import describe_diff
from manager.datasets.fingerprint import counts_per_class, fingerprint

TRAIN = ("--epochs", "1", "--batch-size", "16")


def test_fingerprint_sees_added_touched_and_renamed_files(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", {"a": 0, "b": 1}, {"train": 3})
    first = fingerprint("imagefolder", root)
    assert (first["files"], first["content"]) == (6, False)
    assert first == fingerprint("imagefolder", root)  # deterministic
    assert first["sha256"] != fingerprint("imagefolder:skip_bad=true", root)["sha256"]  # spec
    img = root / "train" / "a" / "000.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    touched = fingerprint("imagefolder", root)
    assert touched["sha256"] != first["sha256"] and touched["files"] == 6
    img.rename(img.with_name("x.png"))
    assert fingerprint("imagefolder", root)["sha256"] != touched["sha256"]
    write_class(root, "c", 2, {"train": 1})
    grown = fingerprint("imagefolder", root)
    assert grown["files"] == 7 and grown["bytes"] > first["bytes"]
    # Content hashes: the same listing with different bytes differs only with content=True.
    a, b = tmp_path / "p", tmp_path / "q"
    for folder, data in ((a, b"one"), (b, b"two")):
        folder.mkdir()
        (folder / "f").write_bytes(data)
        os.utime(folder / "f", ns=(0, 0))
    assert fingerprint("x", a)["sha256"] == fingerprint("x", b)["sha256"]
    hashed = [fingerprint("x", f, content=True)["sha256"] for f in (a, b)]
    assert hashed[0] != hashed[1]
    assert fingerprint("synthetic", None)["files"] == 0


def test_counts_and_diff_words() -> None:
    assert counts_per_class([0, 2, 2], ["a", "b", "c"]) == {"a": 1, "b": 0, "c": 2}
    parent = {"classes": ["a", "b"], "settings_hash": "s", "data": {"train": {"images": 100}}}
    child = {
        "classes": ["a", "b", "c", "d"],
        "settings_hash": "s",
        "parent": 1,
        "data": {"train": {"images": 220}},
    }
    assert describe_diff(child, parent) == "+120 images, 2 new classes"
    assert describe_diff({**child, "classes": ["a"]}, parent) == "+120 images, 1 class dropped"
    assert describe_diff({**parent, "parent": 1}, parent) == "same data and settings"
    assert describe_diff({"parent": None}, None) == "first"


@pytest.mark.slow
def test_if_changed_trains_only_on_new_data(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    write_folder(root, {"a": 0, "b": 1})
    fork_mgr(home, "task", "add", "f", "--dataset", "imagefolder", "--root", str(root),
        "--backbone", TINY_SPEC, "--weights", "random")  # fmt: skip
    v1 = fork_mgr(home, "train", "f", *TRAIN, "--json").json()
    lin = fork_mgr(home, "versions", "f@1", "--json").json()[0]["lineage"]
    assert lin["classes"] == ["a", "b"] and lin["parent"] is None and lin["init"] is None
    data = lin["data"]
    assert (data["dataset"], data["root"]) == ("imagefolder", str(root.resolve()))
    assert data["train"] == {"split": "train", "images": 16, "per_class": {"a": 8, "b": 8}}
    assert data["eval"] == {"split": "test", "images": 8, "per_class": {"a": 4, "b": 4}}
    assert data["fingerprint"]["files"] == 32 and len(data["fingerprint"]["sha256"]) == 64
    assert v1["metrics"]["per_class_top1"].keys() == {"a", "b"}

    same = fork_mgr(home, "train", "f", *TRAIN, "--if-changed")
    assert same.returncode == 0
    assert same.stdout.strip().splitlines() == [same.stdout.strip()]  # one line
    assert same.stdout.startswith("f@1 unchanged: data (32 files")
    assert len(fork_mgr(home, "versions", "f", "--json").json()) == 1  # nothing trained
    # Other settings count as a change, and so does the data.
    other = fork_mgr(
        home, "train", "f", *TRAIN, "--if-changed", "--seed", "7", "--promote", "never"
    )
    assert "unchanged" not in other.stdout
    shutil.copy(root / "train" / "a" / "000.png", root / "train" / "a" / "100.png")
    grown = fork_mgr(home, "train", "f", *TRAIN, "--if-changed", "--json").json()
    assert grown["version"] == 3
    rows = {v["number"]: v for v in fork_mgr(home, "versions", "f", "--json").json()}
    assert rows[3]["lineage"]["data"]["train"]["per_class"] == {"a": 9, "b": 8}
    assert rows[3]["lineage"]["parent"] == 1 and rows[3]["changes"] == "+1 images"
    table = fork_mgr(home, "versions", "f").stdout
    assert "from v1: +1 images" in table
