"""``mgr train --tune`` / ``--lr auto``: a successive-halving search recorded with the version."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_SPEC, assert_clean_error

from manager.errors import MgrError
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors
from manager.train.methods import get_method
from manager.train.tune import holdout, make_plan

KNOBS = ("lr", "lr_norm", "lr_branch", "weight_decay", "drop_path")
ALL_RATES = ("--lr", "1e-3", "--lr-norm", "1e-3", "--lr-branch", "1e-4")
FAST = ("--epochs", "2", "--batch-size", "32", "--groups", "96")


def add_task(mgr, name: str, dataset: str = "synthetic:per_class=4") -> None:
    mgr("task", "add", name, "--dataset", dataset, "--backbone", TINY_SPEC, "--weights", "random")


def test_plan_costs_about_the_budget():
    cfg = TrainConfig(epochs=100)
    plan = make_plan(cfg, get_method("consolidator"), list(KNOBS), configs=9, budget=2.0)
    assert plan.rungs == [(9, 11), (3, 33)]
    assert plan.trials == 12 and plan.cost == pytest.approx(1.98)
    assert "12 trials, ~2.0x one run" in plan.describe(KNOBS)
    # The current settings are the first candidate; the lrs stay in the method's range.
    default = get_method("consolidator").default_lr
    assert plan.candidates[0] == pytest.approx({
        "lr": default, "lr_norm": default / 3, "lr_branch": default / 10, "weight_decay": 1e-4,
        "drop_path": 0.0,
    }, rel=1e-12)  # fmt: skip
    lo, hi = get_method("consolidator").lr_range
    assert all(lo <= c["lr"] <= hi for c in plan.candidates[1:])
    assert len({c["lr"] for c in plan.candidates}) == 9
    # No trial runs longer than one run.
    short = make_plan(TrainConfig(epochs=2), get_method("lora"), ["lr"], configs=9, budget=2.0)
    assert max(e for _, e in short.rungs) == 2
    with pytest.raises(MgrError, match="nothing to tune"):
        make_plan(cfg, get_method("lora"), [], configs=9)


def test_holdout_is_a_fifth_of_each_class_and_fixed_by_the_seed():
    labels = torch.arange(50) % 5
    data = ImageTensors(torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1), labels)
    train, held = holdout(data, seed=0)
    assert len(held) == 10 and len(train) == 40
    assert sorted(held.labels.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    ids = set(train.images.flatten().tolist()) | set(held.images.flatten().tolist())
    assert ids == set(range(50))  # disjoint and complete
    again = holdout(data, seed=0)[1].images.flatten().tolist()
    other = holdout(data, seed=1)[1].images.flatten().tolist()
    assert again == held.images.flatten().tolist() and other != again
    with pytest.raises(MgrError, match="at least 10"):
        holdout(ImageTensors(data.images[:9], labels[:9]), seed=0)


@pytest.mark.slow
def test_tune_records_the_trials_and_trains_with_the_best(mgr):
    add_task(mgr, "t")
    out = mgr.json("train", "t", "--tune", "--tune-configs", "4", *FAST)
    tune = out["tune"]
    versions = mgr.json("versions", "t")
    assert len(versions) == 1
    hyper = versions[0]["hyperparams"]
    assert hyper["tune"] == tune  # recorded with the version, as train reported it
    assert tune["method"] == "successive_halving" and tune["split"] == "val"
    assert tune["knobs"] == list(KNOBS)
    trials = tune["trials"]
    # 4 configs x 1 epoch, then the best 2 x 2 epochs.
    assert [(t["rung"], t["epochs"]) for t in trials] == [(0, 1)] * 4 + [(1, 2)] * 2
    assert tune["train_images"] == 24 and tune["eval_images"] == 24  # train -> val
    last = [t for t in trials if t["rung"] == 1]
    first = [t["config"] for t in sorted(trials[:4], key=lambda t: -t["score"])]
    survivors = first[:2] if 0 in first[:2] else [first[0], 0]
    assert {t["config"] for t in last} == set(survivors)
    chosen = tune["chosen"]
    best = max(last, key=lambda t: t["score"])
    assert chosen["score"] == best["score"]
    assert {k: chosen[k] for k in KNOBS} in [{k: t[k] for k in KNOBS} for t in last]
    # The current settings (config 0) always reach the last rung.
    assert 0 in {t["config"] for t in last}
    # The version was trained with the chosen values.
    assert tuple(hyper[k] for k in KNOBS) == tuple(chosen[k] for k in KNOBS)
    assert hyper["epochs"] == 2
    # Wide enough that rich does not wrap the settings cell (the table has grown columns).
    text = mgr("versions", "t", "--trials", COLUMNS="400").stdout
    assert "tuned: 6 trials on val" in text and "successive_halving" in text


@pytest.mark.slow
def test_lr_auto_varies_only_the_lr_and_holds_out_when_reporting_on_val(mgr):
    add_task(mgr, "a")
    out = mgr.json(
        "train", "a", "--lr", "auto", "--tune-configs", "3", "--eval-split", "val",
        "--weight-decay", "0.01", *FAST,
    )  # fmt: skip
    tune = out["tune"]
    assert tune["knobs"] == ["lr"]
    assert tune["split"] == "holdout20"  # val reports the result, so it cannot choose it
    assert (tune["train_images"], tune["eval_images"]) == (20, 4)  # 24 train images, 1 in 5
    trials = tune["trials"]
    assert len(trials) == 3 and len({t["lr"] for t in trials}) == 3
    assert {t["weight_decay"] for t in trials} == {0.01}
    assert {t["drop_path"] for t in trials} == {0.0}
    assert out["metrics"]["eval_images"] == 24


@pytest.mark.slow
def test_tune_refusals_are_one_line(mgr):
    add_task(mgr, "e")
    add_task(mgr, "few", "synthetic:num_classes=2,per_class=4")
    for args in (
        ("e", "--tune", "--resume"),  # refused before looking for a checkpoint
        ("e", "--tune", "--fit-budget"),
        ("e", "--tune", *ALL_RATES, "--weight-decay", "0", "--drop-path", "0"),
        ("e", "--lr", "fast"),
        ("few", "--tune", "--eval-split", "val"),  # 8 training images: too few to hold out
    ):
        proc = mgr("train", *args, *FAST, ok=False)
        assert_clean_error(proc)
        if "--resume" in args:
            assert "cannot resume" in proc.stderr
    assert "at least 10" in proc.stderr
    assert mgr.json("versions", "e") == [] and mgr.json("versions", "few") == []
