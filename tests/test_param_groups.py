"""Learning rates per parameter group: each role's tensors in exactly one optimizer group, at
its own rate, decay only on >1-d tensors; the loop's optimizer really uses them; the CLI records
every group's rate with the version."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TINY_SPEC, assert_clean_error, tiny_vit

from manager.train.config import TrainConfig
from manager.train.data import ImageTensors
from manager.train.groups import group_lrs, param_groups, resolve_lrs
from manager.train.loop import fit
from manager.train.methods import get_method
from manager.train.train_adapter import prepare_model

LR, LR_NORM, LR_BRANCH, WD = 2e-3, 5e-4, 4e-3, 0.05


def _expected_role(name: str, p: torch.Tensor) -> str:
    """The role by name alone, independent of how groups.py finds it."""
    if ".branches." in name or "lora_" in name:
        return "branches"
    parts = name.split(".")
    if len(parts) > 1 and parts[-2].startswith("norm"):  # norm1, norm2, the final norm
        return "norms"
    if p.ndim == 1:
        return "biases"
    return "head" if name.startswith("head.") else "weights"


def _prepared(method: str, **cfg_kwargs) -> tuple[torch.nn.Module, TrainConfig]:
    model = tiny_vit(num_classes=5)
    cfg = TrainConfig.from_json(
        dict(method=method, groups="96" if method == "consolidator" else "", **cfg_kwargs)
    )
    prepare_model(model, get_method(method), cfg)
    return model, cfg


EXPECTED_ROLES = {
    "consolidator": {"branches", "norms", "biases", "head"},
    "lora": {"branches", "biases", "head"},
    "bitfit_ln": {"norms", "biases", "head"},
    "full": {"norms", "biases", "head", "weights"},
}


@pytest.mark.parametrize("method", list(EXPECTED_ROLES))
def test_groups_hold_exactly_each_roles_parameters(method):
    model, cfg = _prepared(method, lr=LR, lr_norm=LR_NORM, lr_branch=LR_BRANCH)
    groups = param_groups(model, WD, group_lrs(cfg, LR))
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(trainable)  # each trainable tensor once, nothing frozen
    assert {g["name"] for g in groups} == EXPECTED_ROLES[method]
    rate = {"norms": LR_NORM, "branches": LR_BRANCH}
    params = dict(model.named_parameters())
    for g in groups:
        assert g["lr"] == rate.get(g["name"], LR), g["name"]
        for p in g["params"]:
            n = names[id(p)]
            assert _expected_role(n, params[n]) == g["name"], n
            assert g["weight_decay"] == (WD if p.ndim > 1 else 0.0), n
    # The head's bias trains at the base rate without decay; its weight with decay.
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert by_name["head.bias"]["name"] == "biases" and by_name["head.weight"]["name"] == "head"


def test_defaults_come_from_the_method_and_unused_roles_stay_unset():
    for method in ("consolidator", "lora", "bitfit", "full"):
        m = get_method(method)
        r = resolve_lrs(TrainConfig.from_json(dict(method=method)))
        assert r.lr == m.default_lr
        assert r.lr_norm == (None if m.norm_scale is None else m.default_lr * m.norm_scale)
        assert r.lr_branch == (None if m.branch_scale is None else m.default_lr * m.branch_scale)
    assert resolve_lrs(TrainConfig.from_json(dict(method="bitfit"))).lr_norm is None
    # An explicit rate wins over the scale; the base rate moves the scaled ones.
    r = resolve_lrs(TrainConfig.from_json(dict(method="consolidator", lr=1e-2, lr_norm=1e-3)))
    assert r.lr_norm == 1e-3 and r.lr_branch == 1e-2 * get_method("consolidator").branch_scale


class MemoryCheckpoint:
    """The loop's CheckpointIO, kept in memory: what the loop saved, to read its optimizer."""

    def __init__(self) -> None:
        self.state: dict = {}

    def save(self, state: dict) -> None:
        self.state = state

    def load(self) -> dict:
        return self.state


def test_the_loops_optimizer_uses_the_groups():
    model, cfg = _prepared("consolidator", lr_norm=LR_NORM, epochs=1, batch_size=4)
    g = torch.Generator().manual_seed(0)
    data = ImageTensors(
        torch.randint(0, 255, (8, 3, 32, 32), dtype=torch.uint8, generator=g),
        torch.arange(8) % 5,
    )
    ck = MemoryCheckpoint()
    mean, std = torch.zeros(3), torch.ones(3)
    fit(model, data, cfg, lr=LR, mean=mean, std=std, checkpoint=ck)
    saved = {pg["name"]: pg for pg in ck.state["optimizer"]["param_groups"]}
    assert saved["norms"]["initial_lr"] == LR_NORM
    scale = get_method("consolidator").branch_scale
    assert saved["branches"]["initial_lr"] == pytest.approx(LR * scale)
    assert saved["head"]["initial_lr"] == saved["biases"]["initial_lr"] == LR
    assert saved["norms"]["weight_decay"] == 0.0
    assert saved["branches"]["weight_decay"] == cfg.weight_decay
    assert len(saved["branches"]["params"]) == 8  # 2 blocks x qkv, proj, fc1, fc2
    assert len(saved["norms"]["params"]) == 10  # norm1, norm2 per block + the final norm


@pytest.mark.slow
def test_cli_records_every_groups_rate(mgr):
    mgr("task", "add", "g", "--dataset", "synthetic:per_class=4", "--backbone", TINY_SPEC,
        "--weights", "random")  # fmt: skip
    args = ("train", "g", "--epochs", "1", "--batch-size", "32", "--groups", "96")
    mgr(*args, "--lr", "2e-3", "--lr-norm", "5e-4", "--lr-branch", "4e-3")
    mgr(*args, "--method", "bitfit")
    v1, v2 = mgr.json("versions", "g")
    assert (v1["hyperparams"]["lr"], v1["hyperparams"]["lr_norm"]) == (2e-3, 5e-4)
    assert v1["hyperparams"]["lr_branch"] == 4e-3
    bitfit = get_method("bitfit")
    assert v2["hyperparams"]["lr"] == bitfit.default_lr
    assert v2["hyperparams"]["lr_norm"] is None and v2["hyperparams"]["lr_branch"] is None
    table = mgr("versions", "g").stdout
    assert "norm 5.0e-4" in table and "branch 4.0e-3" in table
    assert_clean_error(mgr(*args, "--lr-norm", "nan", ok=False))
    assert_clean_error(mgr(*args, "--lr-branch", "0", ok=False))
    assert len(mgr.json("versions", "g")) == 2


def test_group_lrs_follow_the_base_rate_when_not_given():
    cfg = dataclasses.replace(TrainConfig.from_json(dict(method="consolidator")), lr=None)
    m = get_method("consolidator")
    lrs = group_lrs(cfg, 1e-2)
    assert lrs.lr == 1e-2 and lrs.lr_norm == pytest.approx(1e-2 * m.norm_scale)
