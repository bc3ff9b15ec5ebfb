"""The adapter: config parsing, layer math, injection, trainable groups, merge equivalence."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_vit
from torch import nn

from manager.adapters import (
    METHOD_GROUPS,
    Branch,
    ConsolidatorConfig,
    ConsolidatorLinear,
    inject_consolidator,
    mark_trainable,
    target_linears,
    unwrap,
)
from manager.adapters.consolidator import branch_forward
from manager.adapters.fold import consolidate
from manager.adapters.inject import select_params
from manager.adapters.validate import check_structure
from manager.delta.apply import apply
from manager.errors import MgrError


def test_parse():
    assert ConsolidatorConfig.parse("384,192").branches == (Branch(384), Branch(192))
    assert ConsolidatorConfig.parse("384,192", shuffle=True).branches == (
        Branch(384, True),
        Branch(192, True),
    )
    cfg = ConsolidatorConfig.parse("96, 96s", drop_path=0.2)
    assert cfg.branches == (Branch(96), Branch(96, True)) and cfg.drop_path == 0.2
    assert str(cfg) == "96,96s"
    assert ConsolidatorConfig.from_json(cfg.to_json()) == cfg
    for bad in ("", "0", "x", "12,,3", "-4"):
        with pytest.raises(MgrError):
            ConsolidatorConfig.parse(bad)
    with pytest.raises(MgrError, match="drop_path"):
        ConsolidatorConfig((Branch(4),), drop_path=1.0)
    # The catalog's JSON spelling and Branch objects parse to the same config.
    assert ConsolidatorConfig.parse([[96, False], [96, True]], drop_path=0.2) == cfg
    assert ConsolidatorConfig.parse(cfg.branches, drop_path=0.2) == cfg


def test_structure_is_checked_against_the_model_widths():
    model = tiny_vit()  # widths 192 (qkv/proj in, fc2 out), 576 (qkv out), 768 (fc1 out)
    for ok in ("96", "192", "1", "64,3s", [[48, True]]):
        check_structure(model, ok)
    for bad, g in (("100000", 100000), ("96,7s", 7), ("384", 384), ([[5, False]], 5)):
        with pytest.raises(MgrError, match=f"g={g} groups do not fit") as info:
            check_structure(model, bad)
        assert "192, 576, 768" in str(info.value) and "\n" not in str(info.value)
    # prepare_model refuses before touching the model.
    from manager.train.config import TrainConfig
    from manager.train.methods import get_method
    from manager.train.train_adapter import prepare_model

    before = {n: type(m) for n, m in model.named_modules()}
    with pytest.raises(MgrError, match="g=7"):
        prepare_model(
            model, get_method("consolidator"), TrainConfig.from_json(dict(groups="96,7s"))
        )
    assert {n: type(m) for n, m in model.named_modules()} == before
    assert prepare_model(
        model, get_method("consolidator"), TrainConfig.from_json(dict(groups="96,48s"))
    ) == (
        (96, False),
        (48, True),
    )


@pytest.mark.parametrize("shuffle", [False, True])
def test_branch_is_reorder_then_block_diagonal(shuffle):
    g, o, c = 4, 3, 6
    w = torch.randn(g, o, c, dtype=torch.float64)
    x = torch.randn(5, 7, g * c, dtype=torch.float64)
    xp = x.view(5, 7, g, c).transpose(-1, -2).reshape(5, 7, g * c) if shuffle else x
    expected = xp @ torch.block_diag(*w).T
    assert torch.allclose(branch_forward(x, w, shuffle), expected)


def test_layer_init_and_divisibility():
    lin = nn.Linear(12, 8)
    layer = ConsolidatorLinear(lin, ConsolidatorConfig((Branch(4), Branch(2, True))))
    assert layer.weight is lin.weight and layer.bias is lin.bias
    assert [tuple(w.shape) for w in layer.branches] == [(4, 2, 3), (2, 4, 6)]
    for w in layer.branches:
        assert 0 < w.abs().max() <= 1e-3
    with pytest.raises(MgrError, match=r"blocks.3.mlp.fc1: weight of shape 8x12 .* g=3"):
        ConsolidatorLinear(lin, ConsolidatorConfig((Branch(3),)), name="blocks.3.mlp.fc1")


def test_targets_and_refusals():
    model = tiny_vit()
    names = [n for n, _ in target_linears(model)]
    assert names == [
        f"blocks.{i}.{t}" for i in range(2) for t in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    ]
    with pytest.raises(MgrError, match="no ViT blocks"):
        target_linears(nn.Sequential(nn.Linear(2, 2)))
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(MgrError, match="g=7"):
        inject_consolidator(model, ConsolidatorConfig((Branch(7),)))
    assert all(type(m) is nn.Linear for _, m in target_linears(model))  # left untouched
    assert model.state_dict().keys() == before.keys()
    inject_consolidator(model, ConsolidatorConfig((Branch(8),)))
    with pytest.raises(MgrError, match="already adapted"):
        inject_consolidator(model, ConsolidatorConfig((Branch(8),)))


def test_trainable_groups():
    model = inject_consolidator(tiny_vit(num_classes=4), ConsolidatorConfig((Branch(8),)))
    chosen = mark_trainable(model, METHOD_GROUPS["consolidator"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(chosen)
    expected = set()
    for i in range(2):
        for t in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            expected |= {f"blocks.{i}.{t}.bias", f"blocks.{i}.{t}.branches.0"}
        expected |= {f"blocks.{i}.norm{j}.{p}" for j in (1, 2) for p in ("weight", "bias")}
    expected |= {"norm.weight", "norm.bias", "head.weight", "head.bias"}
    assert trainable == expected
    plain = tiny_vit()
    assert set(mark_trainable(plain, METHOD_GROUPS["linear"])) == {"head.weight", "head.bias"}
    bitfit = set(mark_trainable(plain, METHOD_GROUPS["bitfit"]))
    assert len(bitfit) == 8 + 2 and "blocks.0.attn.qkv.bias" in bitfit
    assert len(mark_trainable(plain, METHOD_GROUPS["bitfit_ln"])) == 8 + 10 + 2
    assert all(p.requires_grad for p in mark_trainable(plain, ("all",)).values())
    with pytest.raises(MgrError, match="unknown parameter group"):
        mark_trainable(plain, ("nope",))


def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Trained-looking values: branches ~1e-2, biases/LayerNorms/head moved."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in select_params(model, METHOD_GROUPS["consolidator"]).values():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-2)


STRUCTURES = [
    ((8, False),),
    ((4, True),),
    ((8, False), (4, True)),  # different g, with and without reorder
    ((8, False), (4, False)),  # nested supports
    ((4, False), (4, True)),  # partial overlap
    ((3, True), (16, False), (2, True)),  # reorder without a single view (c=64, g=3 on 192)
]


@pytest.mark.parametrize("branches", STRUCTURES)
def test_adapted_equals_merged(branches):
    cfg = ConsolidatorConfig(tuple(Branch(g, s) for g, s in branches), drop_path=0.5)
    base = tiny_vit(num_classes=6, seed=0)
    adapted = inject_consolidator(copy.deepcopy(base), cfg)
    _perturb(adapted)
    adapted.eval()
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = adapted(x)
        delta = consolidate(adapted, backbone_name="tiny", backbone_hash="h")
        # stage 2 on a fresh plain model
        live = dict(base.named_parameters())
        w0 = {n: t.detach().clone() for n, t in live.items()}
        apply(live, w0, delta)
        got = base(x)
        merged = unwrap(copy.deepcopy(adapted))  # the in-memory merge agrees too
        assert all(type(m) is nn.Linear for _, m in target_linears(merged))
        got2 = merged(x)
    scale = want.abs().max()
    assert (got - want).abs().max() <= 1e-5 * scale
    assert (got2 - want).abs().max() <= 1e-5 * scale
    assert (want - w0_logits(base, w0, x)).abs().max() > 1e-3 * scale  # the delta matters


def w0_logits(model: nn.Module, w0: dict, x: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(model)
    m.load_state_dict(w0, strict=False)
    with torch.no_grad():
        return m(x)


def test_drop_path_is_per_sample_in_training():
    cfg = ConsolidatorConfig((Branch(8),), drop_path=0.5)
    layer = ConsolidatorLinear(nn.Linear(16, 16), cfg).train()
    with torch.no_grad():
        layer.branches[0].fill_(1.0)
    x = torch.randn(64, 5, 16)
    y = layer(x)
    plain = nn.functional.linear(x, layer.weight, layer.bias)
    dropped = (y - plain).abs().amax(dim=(1, 2)) < 1e-6
    assert 0 < int(dropped.sum()) < 64  # some samples lost the branch, others kept it


def test_backward_reaches_branches():
    model = inject_consolidator(tiny_vit(), ConsolidatorConfig((Branch(8), Branch(4, True))))
    mark_trainable(model, METHOD_GROUPS["consolidator"])
    model.train()
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    layer = model.blocks[0].attn.qkv
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in layer.branches)
    assert layer.weight.grad is None


# On a 96 x 48 weight: plain, reordered with a view (12s: g % c == 0; 2s: c % g == 0), reordered
# without one (3s, 16s), several branches, nested and overlapping supports.
KERNEL_STRUCTURES = [
    ((8, False),),
    ((12, True),),
    ((2, True),),
    ((4, True), (8, False)),
    ((3, True), (2, False)),
    ((16, True), (4, False), (4, True)),
]


def _reference(layer: ConsolidatorLinear, x: torch.Tensor, masks=None) -> torch.Tensor:
    """``x W0^T + b + sum_i m_i branch_i(x)`` in the plain reference form."""
    y = nn.functional.linear(x, layer.weight, layer.bias)
    for i, (b, w) in enumerate(zip(layer.structure, layer.branches, strict=True)):
        part = branch_forward(x, w, b.shuffle)
        y = y + (part if masks is None else masks[i] * part)
    return y


def _kernel_layer(branches, drop_path: float) -> ConsolidatorLinear:
    cfg = ConsolidatorConfig(tuple(Branch(g, s) for g, s in branches), drop_path=drop_path)
    torch.manual_seed(0)
    layer = ConsolidatorLinear(nn.Linear(48, 96), cfg).train()
    with torch.no_grad():
        for w in layer.branches:
            w.normal_(0, 1e-1)
    layer.weight.requires_grad_(False)
    return layer


def _outputs_and_grads(layer, x, y, gy):
    params = [x, layer.bias, *layer.branches]
    return [y, *torch.autograd.grad(y, params, gy)]


@pytest.mark.parametrize("branches", KERNEL_STRUCTURES)
@pytest.mark.parametrize("drop_path", [0.0, 0.5])
def test_training_forms_match_reference(branches, drop_path):
    """Both training forms (merged weight without DropPath, masked branches with it) give the
    reference branch sum's outputs and gradients, and the merged weight ``W0 + dW``'s outputs."""
    layer = _kernel_layer(branches, drop_path)
    x = torch.randn(6, 5, 48).requires_grad_()
    gy = torch.randn(6, 5, 96)
    torch.manual_seed(3)
    got = _outputs_and_grads(layer, x, layer(x), gy)
    masks = None
    if drop_path:  # the layer's own draw: one uniform per sample and branch, in branch order
        torch.manual_seed(3)
        keep = 1 - drop_path
        masks = [(torch.rand(6, 1, 1) >= drop_path) / keep for _ in branches]
        assert any(bool((m == 0).any()) for m in masks)  # some branch was dropped somewhere
    want = _outputs_and_grads(layer, x, _reference(layer, x, masks), gy)
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    if not drop_path:
        merged = layer.weight + layer.delta_weight()
        assert torch.allclose(got[0], nn.functional.linear(x, merged, layer.bias), atol=1e-6)
    with torch.no_grad():  # eval: no masks, the merged form, whatever the rate
        y_eval = layer.eval()(x)
    assert torch.allclose(y_eval, _reference(layer, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("drop_path", [0.0, 0.2])
def test_frozen_weight_gets_no_dense_gradient(drop_path):
    """No backward matmul produces an ``out x in`` tensor: W0's gradient is never computed."""
    from torch.utils._python_dispatch import TorchDispatchMode

    layer = _kernel_layer(((8, False), (4, True)), drop_path)
    x = torch.randn(4, 5, 48, requires_grad=True)

    products = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}

    class Shapes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in products:
                self.seen.append(tuple(out.shape))
            return out

    y = layer(x)
    with Shapes() as mode:
        y.square().sum().backward()
    assert mode.seen and (96, 48) not in mode.seen and (48, 96) not in mode.seen
    assert layer.weight.grad is None and x.grad is not None and x.grad.abs().sum() > 0
    # Unfrozen, the same layer does compute it (and correctly): the check above can fail.
    layer.weight.requires_grad_(True)
    torch.manual_seed(5)
    layer(x).square().sum().backward()
    torch.manual_seed(5)
    ref_masks = None
    if drop_path:
        ref_masks = [(torch.rand(4, 1, 1) >= drop_path) / (1 - drop_path) for _ in range(2)]
    ref = _reference(layer, x, ref_masks)
    (want,) = torch.autograd.grad(ref.square().sum(), [layer.weight])
    assert torch.allclose(layer.weight.grad, want, rtol=1e-5, atol=1e-5)


def test_drop_path_keeps_the_expected_value_and_follows_the_seed():
    layer = _kernel_layer(((8, False), (4, True)), 0.2)
    x = torch.randn(1, 3, 48).expand(4000, 3, 48)  # one input, 4000 independent draws
    with torch.no_grad():
        torch.manual_seed(11)
        y = layer(x)
        torch.manual_seed(11)
        assert torch.equal(layer(x), y)  # same global seed, same masks
        assert not torch.equal(layer(x), y)  # the generator moved on
        full = layer.eval()(x[:1])
        base = nn.functional.linear(x[:1], layer.weight, layer.bias)
    # Each branch is kept with p=0.8 and scaled by 1/0.8: the mean over draws is the full output.
    branch_part = (full - base).abs().mean()
    assert (y.mean(0, keepdim=True) - full).abs().mean() < 0.1 * branch_part
    assert (y - full).abs().amax(dim=(1, 2)).max() > 0.5 * branch_part  # and draws do differ


@pytest.mark.parametrize("drop_path", [0.0, 0.2])
def test_bf16_autocast(drop_path):
    """Under autocast the layer computes in bfloat16 (no forced float32), its parameters and their
    gradients stay float32, and it agrees with float32 to bfloat16's precision."""
    layer = _kernel_layer(((8, False), (3, True)), drop_path)
    x = torch.randn(4, 5, 48, requires_grad=True)
    gy = torch.randn(4, 5, 96)

    def run(autocast: bool):
        torch.manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        return _outputs_and_grads(layer, x, y, gy.to(y.dtype))

    y16, *g16 = run(True)
    y32, *g32 = run(False)
    assert y16.dtype == torch.bfloat16 and y32.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in layer.parameters())
    assert [g.dtype for g in g16] == [torch.float32] * len(g16)
    assert (y16.float() - y32).abs().max() <= 2e-2 * y32.abs().max()
    for a, b in zip(g16, g32, strict=True):
        assert (a - b).abs().max() <= 3e-2 * b.abs().max()


def test_drop_path_scales_kept_branches():
    """Per sample and per branch: a branch is either dropped or kept and scaled by 1/keep."""
    cfg = ConsolidatorConfig((Branch(8), Branch(4, True)), drop_path=0.5)
    layer = ConsolidatorLinear(nn.Linear(16, 16), cfg).train()
    x = torch.randn(64, 3, 16)
    with torch.no_grad():
        for w in layer.branches:
            w.normal_(0, 1.0)
        y = layer(x)
        base = nn.functional.linear(x, layer.weight, layer.bias)
        pairs = zip(layer.structure, layer.branches, strict=True)
        parts = [branch_forward(x, w, b.shuffle) for b, w in pairs]
    seen = set()
    for n in range(64):
        options = {
            (k0, k1): base[n] + 2 * k0 * parts[0][n] + 2 * k1 * parts[1][n]
            for k0 in (0, 1)
            for k1 in (0, 1)
        }
        match = [k for k, v in options.items() if torch.allclose(y[n], v, atol=1e-5)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) == 4
