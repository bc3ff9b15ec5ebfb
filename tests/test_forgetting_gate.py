"""The forgetting gate through the real CLI: a version that forgets a class is refused.

Constructed, not hoped for: version 2 is trained on data where class ``c`` has no training
images left (its folder is emptied; validation still has it), so it never predicts ``c``. With
``--gate-margin -100`` its top-1 passes whatever it is, and the per-class gate alone refuses
it; the same run with ``--max-class-drop 100`` is promoted, so the refusal was the class's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_SPEC
from continual_helpers import write_folder
from switch_helpers import fork_mgr, one_thread  # noqa: F401

from manager.train.gate import MIN_CLASS_IMAGES

COUNTS = {"train": 16, "val": MIN_CLASS_IMAGES, "test": 4}


@pytest.mark.slow
def test_a_version_that_forgets_a_class_is_refused(tmp_path: Path) -> None:
    home, root = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    write_folder(root, {"a": 0, "b": 1, "c": 2}, COUNTS)
    fork_mgr(home, "task", "add", "f", "--dataset", "imagefolder", "--root", str(root),
        "--backbone", TINY_SPEC, "--weights", "random")  # fmt: skip
    fork_mgr(home, "train", "f", "--epochs", "3", "--batch-size", "16", "--lr", "1e-2")

    for img in (root / "train" / "c").iterdir():
        img.unlink()  # class c stays in the label set and in val, with nothing to train on
    forget = ("--epochs", "1", "--batch-size", "16", "--gate-margin", "-100")
    out = fork_mgr(home, "train", "f", *forget, "--max-class-drop", "20", "--json").json()
    p = out["promotion"]
    worst = p["worst_classes"][0]
    assert worst["class"] == "c" and worst["new"] == 0.0, p
    assert worst["champion"] > 20, f"the champion must know c for this test to mean anything: {p}"
    assert not p["promoted"] and p["score"] >= p["champion_score"] - 100
    assert p["reason"].startswith("class 'c' drops ") and "--max-class-drop 20" in p["reason"]
    assert (p["max_class_drop"], p["gated_classes"]) == (20, 3)
    refused = [e for e in fork_mgr(home, "history", "--task", "f", "--json").json()
               if e["kind"] == "promotion_refused"]  # fmt: skip
    assert refused[-1]["details"]["worst_classes"][0]["class"] == "c"
    rows = {v["number"]: v for v in fork_mgr(home, "versions", "f", "--json").json()}
    assert rows[1]["active"] and rows[2]["gate"]["promoted"] is False
    assert rows[2]["lineage"]["data"]["train"]["per_class"] == {"a": 16, "b": 16}
    assert rows[2]["changes"] == "-16 images, settings changed"  # epochs and lr differ
    assert rows[2]["metrics"]["per_class_top1"]["c"] == 0.0  # on test: it never answers c
    shown = fork_mgr(home, "versions", "f@2", "--classes").stdout
    assert "gate: refused (class 'c' drops" in shown

    # The same run without the class gate: promoted on its (margin -100) top-1.
    again = fork_mgr(home, "train", "f", *forget, "--max-class-drop", "100", "--json").json()
    assert again["promotion"]["promoted"], again["promotion"]
