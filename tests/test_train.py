"""The trainer through the real CLI: every method records a version whose bytes are the file's,
budgets refuse before training, and a killed run resumes to the same result."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import CLI, TINY_SPEC, assert_clean_error
from safetensors import safe_open

SMALL = "synthetic:per_class=12"
METHODS = ["consolidator", "linear", "bitfit", "bitfit_ln", "lora", "full"]


def add_task(mgr, name: str, dataset: str = SMALL, *extra: str) -> None:
    mgr(
        "task",
        "add",
        name,
        "--dataset",
        dataset,
        "--backbone",
        TINY_SPEC,
        "--weights",
        "random",
        *extra,
    )


@pytest.mark.slow
def test_every_method_records_a_version_with_true_bytes(mgr, home):
    add_task(mgr, "shapes")
    for method in METHODS:
        out = mgr.json(
            "train", "shapes", "--method", method, "--epochs", "1", "--batch-size", "32",
            "--promote", "always",
        )  # fmt: skip
        assert out["method"] == method
        path = Path(out["path"])
        assert path.is_file() and path.parent == home / "artifacts" / "shapes"
        assert out["bytes"] == path.stat().st_size
        assert 0.0 <= out["metrics"]["top1"] <= 100.0
    versions = mgr.json("versions", "shapes")
    assert [v["method"] for v in versions] == METHODS
    assert [v["number"] for v in versions] == [1, 2, 3, 4, 5, 6]
    for v in versions:
        assert v["bytes"] == (home / v["path"]).stat().st_size
    sizes = {v["method"]: v["bytes"] for v in versions}
    # The true cost ordering: a head < BitFit < BitFit+LN < Consolidator/LoRA < the whole model.
    assert sizes["linear"] < sizes["bitfit"] < sizes["bitfit_ln"] < sizes["consolidator"]
    assert max(sizes.values()) == sizes["full"]
    storage = mgr.json("storage")
    assert storage["tasks"][0]["used_bytes"] == sum(sizes.values())
    assert versions[-1]["active"] and versions[-1]["parent_id"] == versions[-2]["id"]


@pytest.mark.slow
def test_consolidator_learns_the_synthetic_shapes(mgr):
    add_task(mgr, "learn", "synthetic:per_class=32")
    out = mgr.json(
        "train", "learn", "--epochs", "12", "--batch-size", "32", "--lr", "3e-3", "--drop-path", "0"
    )
    assert out["metrics"]["top1"] > 100 / 6 * 2, out["metrics"]  # far above chance (16.7%)


@pytest.mark.slow
def test_budget_too_small_is_refused_before_training(mgr, home):
    add_task(mgr, "tight", SMALL, "--budget", "10KB")
    proc = mgr("train", "tight", "--epochs", "50", ok=False)
    assert_clean_error(proc)
    assert "budget" in proc.stderr and "10.0 KB" in proc.stderr
    assert "epoch" not in proc.stderr
    assert not (home / "runs" / "tight").exists()  # no training step was taken
    assert mgr.json("versions", "tight") == []
    # The global budget is enforced the same way.
    mgr("budget", "set", "none", "--task", "tight")
    mgr("budget", "set", "20KB")
    assert_clean_error(mgr("train", "tight", "--epochs", "50", ok=False))
    assert mgr.json("versions", "tight") == []


@pytest.mark.slow
def test_fit_budget_picks_the_finest_structure_that_fits(mgr):
    add_task(mgr, "fit", SMALL, "--budget", "60KB")
    out = mgr.json("train", "fit", "--fit-budget", "--epochs", "1")
    assert out["bytes"] <= 60_000
    ((g, shuffle),) = out["structure"]
    assert g > 96  # the default g=96 (66 KB) does not fit; a coarser one does
    assert not shuffle


@pytest.mark.slow
def test_resume_after_kill_matches_a_straight_run(mgr, home, tmp_path):
    args = ["--epochs", "8", "--batch-size", "16", "--drop-path", "0.2", "--seed", "3"]
    add_task(mgr, "resume", "synthetic:per_class=16")
    proc = mgr.popen("train", "resume", *args)
    ckpt = home / "runs" / "resume" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert mgr.json("versions", "resume") == []  # killed: nothing recorded
    done = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= done < 8
    resumed = mgr.json("train", "resume", *args, "--resume")

    other = CLI(tmp_path / "straight")
    other.home.mkdir()
    add_task(other, "resume", "synthetic:per_class=16")
    straight = other.json("train", "resume", *args)
    for key in ("top1", "top5", "final_loss"):
        assert resumed["metrics"][key] == straight["metrics"][key], key
    # The same tensors, bit for bit (the header's metadata order is the writer's own).
    with safe_open(resumed["path"], "pt") as a, safe_open(straight["path"], "pt") as b:
        keys = sorted(a.keys())
        assert keys == sorted(b.keys()) and a.metadata() == b.metadata()
        for key in keys:
            assert torch.equal(a.get_tensor(key), b.get_tensor(key)), key
    assert not ckpt.exists()  # a finished run leaves no checkpoint behind


@pytest.mark.slow
def test_bad_training_input_is_one_line(mgr):
    add_task(mgr, "bad")
    assert_clean_error(mgr("train", "nosuch", ok=False))
    assert_clean_error(mgr("train", "bad", "--groups", "7", "--epochs", "1", ok=False))
    assert_clean_error(mgr("train", "bad", "--groups", "abc", "--epochs", "1", ok=False))
    assert_clean_error(mgr("train", "bad", "--method", "magic", ok=False))
    assert_clean_error(mgr("train", "bad", "--resume", "--epochs", "1", ok=False))
    assert mgr.json("versions", "bad") == []


@pytest.mark.slow
def test_real_flowers_subset_far_above_chance(assets):
    """The shared pretrained DeiT-tiny, a 10-class Flowers-102 subset, a short consolidator run."""
    from torch.utils.data import Subset

    from manager.backbone import build_backbone
    from manager.datasets import create_dataset
    from manager.datasets.transforms import data_config
    from manager.train.config import TrainConfig
    from manager.train.data import ImageTensors, decode_transform
    from manager.train.evaluate import evaluate
    from manager.train.loop import fit
    from manager.train.methods import get_method

    torch.manual_seed(0)
    spec = "deit_tiny_patch16_224:img_size=112"
    model = build_backbone(spec, assets / "deit_tiny_patch16_224.safetensors", num_classes=10)
    dc = data_config(model)
    mean, std = torch.tensor(dc["mean"]), torch.tensor(dc["std"])

    def subset(split: str) -> ImageTensors:
        ds = create_dataset("flowers102", assets / "flowers-102", split, decode_transform(112))
        keep = [i for i, y in enumerate(ds.targets) if y < 10]
        return ImageTensors.decode(Subset(ds, keep))

    train, val = subset("train"), subset("val")
    assert len(train) == 100 and len(val) == 100
    cfg = TrainConfig.from_json(dict(epochs=5, batch_size=25, drop_path=0.2))
    method = get_method("consolidator")
    method.prepare(model, cfg)
    fit(model, train, cfg, lr=2e-3, mean=mean, std=std)
    acc = evaluate(model, val, 10, mean, std)
    assert acc["top1"] > 60.0, acc  # chance is 10%
