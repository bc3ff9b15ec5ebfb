"""The Python API (``manager.api``, re-exported by ``manager``): per-method configs, ``adapt``,
``train_adapter`` on a user's own DataLoader, ``consolidate`` -> ``Delta`` -> ``apply_to``, and
``open_home`` on the CLI's catalog. Real timm models, real safetensors files, a real SQLite file."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC, tiny_vit
from torch.utils.data import DataLoader, TensorDataset

import manager
from manager import (
    BadInput,
    BitFitConfig,
    ConsolidatorConfig,
    Delta,
    Diverged,
    LoraConfig,
    MgrError,
    NotFound,
    adapt,
    consolidate,
    open_home,
    train_adapter,
)
from manager.adapters.consolidator import Branch


def _loader(n: int = 16, classes: int = 3, seed: int = 0, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


# -- configs --------------------------------------------------------------------------------------


def test_lora_config_defaults_and_checks() -> None:
    cfg = LoraConfig(rank=4)
    assert cfg.alpha == 4.0 and cfg.scale == 1.0
    assert cfg.target_modules == ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    assert LoraConfig(rank=4, alpha=8, target_modules="attn.qkv").target_modules == ("attn.qkv",)
    for bad in (
        {"rank": 0},
        {"rank": 2.5},
        {"rank": True},
        {"alpha": float("nan")},
        {"alpha": -1.0},
        {"target_modules": ("attn.q",)},
        {"target_modules": ()},
    ):
        with pytest.raises(BadInput) as err:
            LoraConfig(**bad)
        assert "\n" not in str(err.value)


def test_bitfit_and_consolidator_configs_check_themselves() -> None:
    assert BitFitConfig().method == "bitfit"
    assert BitFitConfig(with_norms=True).method == "bitfit_ln"
    with pytest.raises(BadInput, match="with_norms must be True or False"):
        BitFitConfig(with_norms="yes")  # type: ignore[arg-type]
    cfg = ConsolidatorConfig(branches="96,48s")
    assert cfg.branches == (Branch(96), Branch(48, True))
    assert ConsolidatorConfig(branches=[[96, False]]).branches == (Branch(96),)
    for bad in ({"branches": "96,x"}, {"branches": ()}, {"drop_path": 1.0}, {"drop_path": "0"}):
        with pytest.raises(BadInput):
            ConsolidatorConfig(**bad)


# -- adapt ----------------------------------------------------------------------------------------


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_adapt_dispatches_on_the_config_type() -> None:
    m = adapt(tiny_vit(3), ConsolidatorConfig(branches="96"))
    names = _trainable(m)
    assert "blocks.0.attn.qkv.branches.0" in names and "head.weight" in names
    assert "blocks.0.attn.qkv.weight" not in names and "cls_token" not in names
    assert "blocks.1.norm1.weight" in names and "blocks.1.mlp.fc2.bias" in names

    m = adapt(tiny_vit(3), LoraConfig(rank=2, target_modules=("attn.qkv",)))
    names = _trainable(m)
    assert names == {f"blocks.{i}.attn.qkv.lora_{ab}" for i in (0, 1) for ab in "AB"} | {
        "head.weight",
        "head.bias",
    }

    names = _trainable(adapt(tiny_vit(3), BitFitConfig()))
    assert "blocks.0.attn.qkv.bias" in names and "blocks.0.norm1.weight" not in names
    assert "blocks.0.norm1.weight" in _trainable(adapt(tiny_vit(3), BitFitConfig(with_norms=True)))


def test_a_config_the_model_cannot_take_leaves_it_untouched() -> None:
    model = tiny_vit(3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BadInput, match="g=384 groups do not fit this backbone"):
        adapt(model, ConsolidatorConfig())  # ViT-B's default; DeiT-tiny's widths are 192, ...
    with pytest.raises(BadInput, match="LoRA rank 500 does not fit"):
        adapt(model, LoraConfig(rank=500))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(BadInput, match="takes a ConsolidatorConfig"):
        adapt(model, "lora")  # type: ignore[arg-type]
    adapt(model, BitFitConfig())
    with pytest.raises(BadInput, match="already adapted"):
        adapt(model, BitFitConfig())


# -- train, consolidate, merge -------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, tol",
    [
        # The same fp32 sums in both forms (x (W0 + dW)^T): equal to a few ulps of the logits.
        (ConsolidatorConfig(branches="96,48s"), 1e-5),
        # base(x) + x A^T B^T s  vs  x (W0 + s B A)^T: another order of fp32 sums.
        (LoraConfig(rank=4, alpha=8), 1e-4),
        (BitFitConfig(with_norms=True), 0.0),  # whole tensors set: the very same weights
    ],
    ids=["consolidator", "lora", "bitfit_ln"],
)
def test_train_consolidate_save_load_merge(config, tol: float, tmp_path: Path) -> None:
    model = tiny_vit(3)
    plain = copy.deepcopy(model)  # W0, as a user keeps it
    w0 = plain.blocks[0].attn.qkv.weight.detach().clone()
    adapt(model, config)
    result = train_adapter(model, _loader(), epochs=2, lr=1e-2)
    assert len(result.losses) == 2 and all(math.isfinite(v) for v in result.losses)
    assert result.images == 32
    delta = consolidate(model)
    assert delta.meta.method == {"ConsolidatorConfig": "consolidator", "LoraConfig": "lora"}.get(
        type(config).__name__, "bitfit_ln"
    )
    assert delta.meta.backbone == "deit_tiny_patch16_224" and len(delta.meta.backbone_hash) == 64
    path = tmp_path / "task.safetensors"
    path.write_bytes(delta.to_bytes())
    merged = Delta.load(path).apply_to(plain)
    assert merged is plain
    # The frozen W0 inside the adapted model never moved; the merged weights did (training).
    if not isinstance(config, BitFitConfig):
        assert not torch.equal(plain.blocks[0].attn.qkv.weight, w0)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, got = model.eval()(x), plain.eval()(x)
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_the_frozen_backbone_does_not_move_in_training() -> None:
    model = adapt(tiny_vit(3), ConsolidatorConfig(branches="96"))
    w0 = model.blocks[1].mlp.fc1.weight.detach().clone()
    head = model.head.weight.detach().clone()
    train_adapter(model, _loader(), epochs=1, lr=1e-2)
    assert torch.equal(model.blocks[1].mlp.fc1.weight, w0)
    assert not torch.equal(model.head.weight, head)


def test_train_adapter_refuses_bad_settings_and_reports_divergence() -> None:
    with pytest.raises(BadInput, match="not adapted"):
        train_adapter(tiny_vit(3), _loader())
    model = adapt(tiny_vit(3), BitFitConfig())
    for kwargs in ({"epochs": 0}, {"lr": float("inf")}, {"lr": -1.0}, {"weight_decay": -1}):
        with pytest.raises(BadInput):
            train_adapter(model, _loader(), **kwargs)
    nan_images = DataLoader(
        TensorDataset(torch.full((4, 3, 32, 32), float("nan")), torch.zeros(4, dtype=torch.long)),
        batch_size=4,
    )
    with pytest.raises(Diverged, match="training diverged: the loss is nan at epoch 1"):
        train_adapter(model, nan_images)


def test_apply_to_a_model_with_another_head_is_one_line_and_changes_nothing() -> None:
    model = adapt(tiny_vit(3), BitFitConfig())
    delta = consolidate(model)
    other = tiny_vit(5)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(MgrError, match="a head for another number of classes"):
        delta.apply_to(other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


# -- the home -------------------------------------------------------------------------------------


def test_open_home_reads_the_clis_catalog(mgr, home: Path) -> None:
    mgr("task", "add", "pets", "--dataset", "synthetic:num_classes=2", "--backbone", TINY_SPEC)
    with open_home(home) as h:
        assert h.task_names() == ["pets"]
        assert h.store.root == home.resolve()
        from manager.catalog import tasks

        with h.session(write=False) as s, pytest.raises(NotFound, match="unknown task 'cats'"):
            tasks.get_task(s, "cats")
        sw = h.switcher()
        with pytest.raises(MgrError, match="has no active version"):
            sw.switch("pets")


def test_every_exported_name_resolves() -> None:
    for name in manager.__all__:
        assert getattr(manager, name) is not None
    with pytest.raises(AttributeError):
        manager.no_such_name  # noqa: B018
