"""The Consolidator's defaults, pinned: a change to them must be deliberate (issue 16).

They come from the ablation in BENCHMARKS.md ("Consolidator defaults: the ablation"): head and
biases at BitFit's own rate (a Consolidator trains every tensor BitFit trains, so it must not
train them slower), LayerNorms at a third of it, branches at a tenth, starting uniform in +-1e-3,
one g=96 branch on DeiT-tiny (two input channels per group), no DropPath.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vit

from manager.adapters.consolidator import ConsolidatorLinear
from manager.train.config import TrainConfig
from manager.train.groups import group_lrs, param_groups, resolve_lrs
from manager.train.methods import default_structure, get_method
from manager.train.tune import candidates

LR, LR_NORM, LR_BRANCH, INIT = 1e-2, 1e-2 / 3, 1e-3, 1e-3


def test_per_role_rates_of_mgr_train_with_no_flags():
    cfg = resolve_lrs(TrainConfig())
    assert cfg.method == "consolidator"
    assert cfg.lr == pytest.approx(LR, rel=1e-12)
    assert cfg.lr_norm == pytest.approx(LR_NORM, rel=1e-12)
    assert cfg.lr_branch == pytest.approx(LR_BRANCH, rel=1e-12)
    assert cfg.drop_path == 0.0 and cfg.adapter.branches is None and not cfg.adapter.shuffle
    # Never slower than BitFit on what BitFit trains, and BitFit+LN's norms at the same rate.
    assert cfg.lr == get_method("bitfit").default_lr
    assert cfg.lr_norm == resolve_lrs(TrainConfig.from_json(dict(method="bitfit_ln"))).lr_norm
    # An explicit rate wins over the role's default; the others still follow their own.
    given = resolve_lrs(TrainConfig(lr=3e-3))
    assert (given.lr, given.lr_norm, given.lr_branch) == pytest.approx((3e-3, 1e-3, 3e-4))
    assert resolve_lrs(TrainConfig(lr_branch=3e-3)).lr_branch == 3e-3


def test_the_optimizer_gets_each_role_at_its_rate():
    model = tiny_vit()
    method = get_method("consolidator")
    cfg = resolve_lrs(TrainConfig())
    method.prepare(model, cfg)
    groups = {g["name"]: g for g in param_groups(model, 1e-4, group_lrs(cfg, cfg.lr))}
    assert set(groups) == {"head", "biases", "branches", "norms"}
    expected = {"head": LR, "biases": LR, "norms": LR_NORM, "branches": LR_BRANCH}
    assert {k: g["lr"] for k, g in groups.items()} == pytest.approx(expected, rel=1e-12)
    # Decay only on matrices: the head's weight and the branches.
    assert groups["norms"]["weight_decay"] == groups["biases"]["weight_decay"] == 0.0
    assert groups["branches"]["weight_decay"] == groups["head"]["weight_decay"] == 1e-4


def test_one_g96_branch_starting_uniform_in_pm_1e3():
    torch.manual_seed(0)
    model = tiny_vit()
    assert default_structure(model) == "96"  # DeiT-tiny: 192 channels, two per group
    get_method("consolidator").prepare(model, TrainConfig())
    layers = [m for m in model.modules() if isinstance(m, ConsolidatorLinear)]
    assert layers and all(len(m.branches) == 1 and m.drop_path == 0.0 for m in layers)
    assert all(m.branches[0].shape[0] == 96 for m in layers)
    w = torch.cat([m.branches[0].detach().flatten() for m in layers])
    # Uniform in [-1e-3, 1e-3]: within the bound, and with this many draws (9,216)
    # the extremes come within 1% of it and the mean of |w| within 2% of bound / 2.
    assert w.numel() > 5_000
    assert w.abs().max() <= INIT
    assert w.abs().max() > 0.99 * INIT
    assert w.abs().mean().item() == pytest.approx(INIT / 2, rel=0.02)


def test_tune_ranges_and_its_first_candidate_is_the_default():
    method = get_method("consolidator")
    assert method.lr_range == (2e-3, 3e-2)
    assert method.norm_range == (3e-4, 1e-2)
    assert method.branch_range == (1e-4, 3e-3)
    knobs = ["lr", "lr_norm", "lr_branch", "weight_decay", "drop_path"]
    cands = candidates(TrainConfig(), method, knobs, 9)
    assert cands[0] == pytest.approx(
        {"lr": LR, "lr_norm": LR_NORM, "lr_branch": LR_BRANCH, "weight_decay": 1e-4,
         "drop_path": 0.0},
        rel=1e-12,
    )  # fmt: skip
    for c in cands[1:]:
        assert 2e-3 <= c["lr"] <= 3e-2
        assert 3e-4 <= c["lr_norm"] <= 1e-2
        assert 1e-4 <= c["lr_branch"] <= 3e-3
    # Drawn apart from the lr: the ratios vary from candidate to candidate.
    assert len({round(c["lr_branch"] / c["lr"], 6) for c in cands}) == len(cands)
