"""``train.loop``: fit's pieces (build_optimizer, restore_checkpoint, train_one_epoch, Throughput)
keep its promises: a run stopped after an epoch's checkpoint and resumed ends bit for bit where a
straight run ends, and the resume refuses a checkpoint made with other settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_vit

from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store
from manager.train.checkpoint import Checkpoint
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors
from manager.train.loop import EpochEvent, FitResult, Throughput, fit, trainable_state

MEAN, STD = torch.zeros(3), torch.ones(3)


class Stop(Exception):
    """Raised from the progress callback: the process "dies" right after a checkpoint."""


def _split() -> ImageTensors:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8, generator=g)
    return ImageTensors(images, torch.arange(20) % 4)


def _model() -> torch.nn.Module:
    model = tiny_vit(num_classes=4, seed=3, drop_path_rate=0.1)  # DropPath: the RNG matters
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith(("head", "blocks.1.norm")) or name.endswith("bias")
    return model


def _fit(ck: Checkpoint | None, cfg: TrainConfig, **kw) -> tuple[torch.nn.Module, FitResult]:
    model = _model()
    return model, fit(model, _split(), cfg, lr=1e-2, mean=MEAN, std=STD, checkpoint=ck, **kw)


def _checkpoint(tmp_path: Path, task: str) -> Checkpoint:
    home = Home.resolve(tmp_path / "home").ensure()
    return Checkpoint.of(Store.of(home), task)


def test_a_run_resumed_after_an_epoch_matches_a_straight_run(tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, batch_size=8, seed=5)  # the default method: fit needs no other
    straight_model, straight = _fit(None, cfg)

    ck = _checkpoint(tmp_path, "t")

    def stop_after_first(event: object) -> None:
        if isinstance(event, EpochEvent) and event.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        _fit(ck, cfg, progress=stop_after_first)
    assert ck.load()["epoch"] == 1
    resumed_model, resumed = _fit(ck, cfg, resume=True)

    a, b = trainable_state(straight_model), trainable_state(resumed_model)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]
    assert resumed.final_loss == straight.final_loss

    other = TrainConfig(epochs=3, batch_size=8, seed=6)
    with pytest.raises(MgrError, match="other settings"):
        _fit(ck, other, resume=True)
    with pytest.raises(MgrError, match="nothing to resume"):
        _fit(None, cfg, resume=True)


def test_throughput_leaves_out_new_shapes_and_falls_back_to_plain_rates() -> None:
    meter = Throughput(torch.device("cpu"))
    # A run whose every epoch is one step of one shape: no steady step at all.
    assert meter.overall([{"images_per_s": 10.0}, {"images_per_s": 30.0}]) == 20.0
    assert meter.overall([]) == 0.0
    meter.start_epoch()
    batch = _split().epoch(8, lambda x: x.float())  # type: ignore[arg-type]
    for b in batch:  # shapes 8, 8, 4: the first 8 and the 4 are set-up steps
        with meter.step(b):
            pass
    rate = meter.end_epoch(20)
    assert meter.images == 8 and rate > 0  # only the second batch of 8 counted
    assert meter.overall([]) == meter.images / meter.seconds
