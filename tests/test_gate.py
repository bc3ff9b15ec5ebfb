"""The promotion gate through the real CLI: tiny synthetic task, one epoch a run.

One task goes through every mode in turn (each run is a new version): the first version is the
champion without a comparison; ``never`` and ``always`` evaluate nothing; ``gate`` scores the new
version and the champion on the same split and records the decision, both scores and the split.

The forgetting gate (per class), constructed, not hoped for: version 2 is trained on data where
class ``c`` has no training images left (its folder is emptied; validation still has it), so it
never predicts ``c``. With ``--gate-margin -100`` its top-1 passes whatever it is, and the
per-class gate alone refuses it; the same run with ``--max-class-drop 100`` is promoted, so the
refusal was the class's.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_SPEC, assert_clean_error
from continual_helpers import write_folder
from switch_helpers import fork_mgr, one_thread  # noqa: F401

from manager.train.gate import MIN_CLASS_IMAGES

TRAIN = ("--epochs", "1", "--batch-size", "24")


def js(home: Path, *args: str):
    return fork_mgr(home, *args, "--json").json()


def champion(home: Path) -> int:
    return next(v["number"] for v in js(home, "versions", "g") if v["active"])


def last(home: Path, *kinds: str) -> dict:
    return [e for e in js(home, "history", "--task", "g") if e["kind"] in kinds][-1]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    fork_mgr(h, "task", "add", "g", "--dataset", "synthetic:per_class=4", "--backbone", TINY_SPEC,
        "--weights", "random")  # fmt: skip
    return h


@pytest.mark.slow  # five training runs; the next test keeps the gate fast
def test_gate_modes_and_what_the_history_records(home: Path) -> None:
    first = js(home, "train", "g", *TRAIN)
    assert first["promotion"]["promoted"] and first["promotion"]["reason"] == "first version"
    assert champion(home) == 1

    never = js(home, "train", "g", *TRAIN, "--seed", "1", "--promote", "never")
    assert never["promotion"] == {"mode": "never", "promoted": False, "reason": "--promote never"}
    assert champion(home) == 1
    assert last(home, "promoted", "promotion_refused")["details"]["number"] == 1  # nothing new

    always = fork_mgr(home, "train", "g", *TRAIN, "--seed", "2", "--promote", "always")
    assert "promotion: v3 promoted (--promote always)" in always.stdout
    assert "gate:" not in always.stderr  # nothing evaluated
    assert champion(home) == 3

    # A margin no score can reach: refused, both scores and the split recorded.
    refused = fork_mgr(home, "train", "g", *TRAIN, "--seed", "3", "--gate-margin", "100")
    line = next(ln for ln in refused.stdout.splitlines() if ln.startswith("gate:"))
    assert line.startswith("gate: v4 ") and " vs champion v3 " in line
    assert line.endswith("% on val (margin 100.0): not promoted")
    assert champion(home) == 3
    ev = last(home, "promotion_refused")
    d = ev["details"]
    assert (d["number"], d["champion"], d["champion_version"]) == (4, 3, 3)
    assert (d["split"], d["margin"], d["metric"], d["images"]) == ("val", 100.0, "top1", 24)
    assert 0 <= d["score"] <= 100 and 0 <= d["champion_score"] <= 100
    assert f"{d['score']:.1f}% vs champion v3 {d['champion_score']:.1f}%" in line
    v3_score = d["champion_score"]

    # Margin -100: any score passes. The champion is scored again, to the same number.
    promoted = js(home, "train", "g", *TRAIN, "--seed", "4", "--gate-margin", "-100")
    p = promoted["promotion"]
    assert p["promoted"] and p["mode"] == "gate" and p["split"] == "val"
    assert p["champion_version"] == 3 and p["champion_score"] == v3_score
    assert champion(home) == 5
    ev = last(home, "promoted")
    assert ev["details"]["previous"] == 3 and ev["details"]["score"] == p["score"]
    assert ev["details"]["margin"] == -100.0 and ev["details"]["split"] == "val"

    # The gate's decision can be undone by hand: the champion history is 1, 3, 5.
    assert js(home, "rollback", "g")["version"] == 3


def test_gate_says_what_it_compared_when_training_used_the_validation_split(home: Path) -> None:
    fork_mgr(home, "train", "g", *TRAIN)
    out = fork_mgr(home, "train", "g", *TRAIN, "--seed", "1", "--train-split", "trainval",
              "--gate-margin", "-100")  # fmt: skip
    assert "% on test (margin -100.0): promoted" in out.stdout
    assert "compared on test: no held-out validation split (training used trainval)" in out.stdout
    d = last(home, "promoted")["details"]
    assert d["split"] == "test" and "trainval" in d["split_note"]
    # The split can be named; a split the data set lacks is refused before any training.
    bad = fork_mgr(home, "train", "g", *TRAIN, "--gate-split", "holdout", ok=False)
    assert_clean_error(bad)
    assert "--gate-split" in bad.stderr and "epoch" not in bad.stderr


# -- the forgetting gate: a version that forgets a class is refused ---------------------------

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
