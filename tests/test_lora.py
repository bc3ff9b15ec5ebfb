"""LoRALinear: starts equal to its base layer; merging W + delta_weight() reproduces it."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vit
from torch import nn

from manager.adapters.lora import LoRALinear
from manager.adapters.validate import check_lora_rank
from manager.errors import MgrError


def _layer(seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(48, 96, bias=bias)


def test_starts_equal_to_base():
    base = _layer()
    lora = LoRALinear(base, r=4)
    x = torch.randn(2, 7, 48)
    assert torch.equal(lora(x), base(x))
    assert lora.lora_A.shape == (4, 48) and lora.lora_B.shape == (96, 4)
    assert lora.lora_A.abs().sum() > 0  # A is random, B is zero
    assert torch.count_nonzero(lora.delta_weight()) == 0


@pytest.mark.parametrize("bias", [True, False])
def test_merge_matches_unmerged(bias: bool):
    lora = LoRALinear(_layer(bias=bias), r=8, alpha=16)
    assert lora.scale == 2.0
    with torch.no_grad():
        lora.lora_A.normal_()
        lora.lora_B.normal_(std=0.1)
    x = torch.randn(5, 48)
    y = lora(x)
    merged = lora.merged()
    assert type(merged) is nn.Linear
    y_merged = merged(x)
    assert torch.linalg.norm(y_merged - y) <= 1e-5 * torch.linalg.norm(y)
    # The same by hand: W + delta_weight.
    w = lora.base.weight + lora.delta_weight()
    y_hand = nn.functional.linear(x, w, lora.base.bias)
    assert torch.linalg.norm(y_hand - y) <= 1e-5 * torch.linalg.norm(y)


def test_only_lora_factors_train():
    lora = LoRALinear(_layer(), r=2)
    trainable = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}
    lora(torch.randn(3, 48)).sum().backward()
    assert lora.lora_B.grad is not None and lora.base.weight.grad is None


def test_bad_rank():
    with pytest.raises(ValueError):
        LoRALinear(_layer(), r=0)


def test_rank_is_checked_against_the_narrowest_layer():
    from manager.train.config import TrainConfig
    from manager.train.methods import get_method
    from manager.train.train_adapter import prepare_model

    model = tiny_vit()  # the narrowest adapted width is 192
    for ok in (1, 8, 192):
        check_lora_rank(model, ok)
    for bad in (0, 193, 100_000):
        with pytest.raises(MgrError, match=f"LoRA rank {bad} does not fit.*between 1 and 192"):
            check_lora_rank(model, bad)
    # The trainer checks before it allocates anything.
    with pytest.raises(MgrError, match="LoRA rank 1000 "):
        prepare_model(
            model, get_method("lora"), TrainConfig.from_json(dict(method="lora", lora_rank=1000))
        )
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
