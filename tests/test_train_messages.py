"""The trainer's refusals speak the API (``tune_configs``, ``promote``, ``lr``...) and carry the
CLI's words in ``hint``; each is of the kind a caller can react to. The CLI's line for them is
checked where the CLI runs (test_train_precision, test_label_growth, test_warm_start...)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_vit

import manager
from manager.adapters import config as adapter_config
from manager.cli.group import error_line
from manager.errors import BadInput, Conflict, Corrupt, Diverged, NotFound
from manager.home import Home
from manager.store.fs import Store
from manager.train.checkpoint import Checkpoint
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors
from manager.train.gate import decide
from manager.train.lineage import label_lut
from manager.train.loop import _diverged, fit
from manager.train.methods import get_method
from manager.train.tune import make_plan


def _no_flag(exc: Exception) -> None:
    assert "--" not in str(exc) and "'mgr " not in str(exc), str(exc)
    assert "\n" not in str(exc)


def test_bad_settings_are_bad_input_in_the_apis_words() -> None:
    cfg = TrainConfig(epochs=4)
    with pytest.raises(BadInput, match="tune_configs must be at least 2, got 1") as e:
        make_plan(cfg, get_method("lora"), ["lr"], configs=1)
    _no_flag(e.value)
    with pytest.raises(BadInput, match="tune_budget must be a positive number") as e:
        make_plan(cfg, get_method("lora"), ["lr"], budget=0.0)
    _no_flag(e.value)
    with pytest.raises(BadInput, match="promote must be one of gate, always, never, not 'x'"):
        decide(None, None, None, "x", backbone=None, trained_on="train", eval_split="test")  # type: ignore[arg-type]


@pytest.mark.parametrize("lr", [float("nan"), float("inf"), 0.0, -1e-3])
def test_fit_checks_its_own_lr(lr: float) -> None:
    # TrainConfig checks its rates; fit's lr argument is fit's to check, before any step.
    model = tiny_vit(num_classes=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = ImageTensors(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    cfg = TrainConfig(epochs=1, batch_size=2)
    with pytest.raises(BadInput, match="lr must be a finite number > 0") as e:
        fit(model, data, cfg, lr=lr, mean=torch.zeros(3), std=torch.ones(3))
    _no_flag(e.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_checkpoint_kinds_and_the_resume_hint(tmp_path: Path) -> None:
    home = Home.resolve(tmp_path / "home").ensure()
    ck = Checkpoint.of(Store.of(home), "t")
    with pytest.raises(NotFound, match="no checkpoint to resume"):
        ck.load()
    ck.path.parent.mkdir(parents=True, exist_ok=True)
    ck.path.write_bytes(b"not a checkpoint")
    with pytest.raises(Corrupt, match="cannot read checkpoint") as e:
        ck.load()
    _no_flag(e.value)
    line = error_line(e.value)
    assert line.startswith("error: cannot read checkpoint ")
    assert line.endswith("; delete it and train without --resume") and "\n" not in line


def test_conflicts_and_divergence_carry_the_clis_words_in_the_hint() -> None:
    with pytest.raises(Conflict, match=r"2 class\(es\) not in its label set \(c, d\)") as e:
        label_lut(["a", "c", "d"], ["a", "b"], "pets")
    _no_flag(e.value)
    assert e.value.hint == "record them with 'mgr task refresh pets --yes'"
    assert label_lut(["b", "a"], ["a", "b"], "pets").tolist() == [1, 0]

    err = _diverged("the loss is nan", 0, 2, 1e-2)
    assert isinstance(err, Diverged) and err.hint == "try a smaller --lr"
    assert str(err) == (
        "training diverged: the loss is nan at epoch 1, step 3 (peak lr 0.01); nothing was recorded"
    )


def test_every_method_config_is_exported() -> None:
    for name in ("ConsolidatorConfig", "LoraConfig", "BitFitConfig", "LinearProbeConfig",
                 "FullConfig"):  # fmt: skip
        assert getattr(manager, name) is getattr(adapter_config, name)
        assert name in manager.__all__ and name in dir(manager)
    assert manager.LinearProbeConfig().method == "linear"
    assert manager.FullConfig().method == "full"
