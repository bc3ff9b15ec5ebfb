"""The fused exact switch (``manager.delta.fused``): bit-identical to fresh merges, always."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import tiny_vit

from manager.adapters.inject import delta_whole_params, target_linears
from manager.delta.apply import apply
from manager.delta.delta import ConsolidatorLayer, Delta, DeltaMeta, DenseLayer, LoRALayer
from manager.delta.fused import FlatWeights, PlanCache, fused_switch, union_positions
from manager.delta.structure import positions, scatter_union, support_numel
from manager.errors import MgrError

STRUCTURES = [((4, False),), ((4, False), (8, True)), ((3, True),), ((16, False), (2, True))]


def _delta(model, kind: str, structure, seed: int, dtype=torch.float32) -> Delta:
    gen = torch.Generator().manual_seed(seed)
    layers = {}
    for name, lin in target_linears(model):
        shape = tuple(lin.weight.shape)
        if kind == "consolidator":
            n = support_numel(shape, structure)
            values = (torch.randn(n, generator=gen) * 1e-2).to(dtype)
            layers[f"{name}.weight"] = ConsolidatorLayer(shape, structure, values)
        elif kind == "dense":
            layers[f"{name}.weight"] = DenseLayer(shape, torch.randn(shape, generator=gen) * 1e-2)
        elif kind == "lora":
            a, b = torch.randn(4, shape[1], generator=gen), torch.randn(shape[0], 4, generator=gen)
            layers[f"{name}.weight"] = LoRALayer(shape, a * 1e-2, b * 1e-2)
    whole = {
        n: (p.detach() + torch.randn(p.shape, generator=gen) * 1e-2).to(dtype)
        for n, p in delta_whole_params(model).items()
        if kind != "consolidator" or seed % 2  # some deltas without whole tensors
    }
    return Delta(layers, whole, DeltaMeta(kind, "tiny", "x", dtype, 0))


def test_union_positions_match_the_stored_order() -> None:
    shape = (96, 48)
    for structure in STRUCTURES:
        n = support_numel(shape, structure)
        values = torch.arange(1, n + 1, dtype=torch.float32)
        dense = scatter_union(values, shape, structure).reshape(-1)
        pos = union_positions(shape, structure)
        assert pos.numel() == n == pos.unique().numel()
        assert torch.equal(dense[pos], values)
    assert torch.equal(union_positions(shape, ((4, False),)), positions(shape, 4, False))


def test_adopt_keeps_parameters_and_values() -> None:
    model = tiny_vit(num_classes=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = {n: id(p) for n, p in model.named_parameters()}
    fw = FlatWeights.adopt(model, list(before))
    for n, p in model.named_parameters():
        assert id(p) == ids[n] and torch.equal(p, before[n])
        assert p.data_ptr() == fw.view(n).data_ptr()
    assert fw.flat.numel() == sum(t.numel() for t in before.values())


@pytest.fixture
def one_thread():
    """Tiny tensors: threads only add contention on 2 shared cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_ten_thousand_random_switches_are_bit_identical_to_fresh_merges(one_thread) -> None:
    model = tiny_vit(num_classes=0, embed_dim=48, num_heads=3).eval()  # 10k checks stay cheap
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    fw = FlatWeights.adopt(model, list(base))
    cache = PlanCache(fw, base)
    kinds = [("consolidator", s) for s in STRUCTURES] + [("dense", None), ("lora", None)]
    deltas = [_delta(model, k, s, seed) for seed, (k, s) in enumerate(kinds * 2)]
    deltas.append(_delta(model, "consolidator", STRUCTURES[1], 99, torch.bfloat16))
    expected = []
    for d in deltas:
        live = {n: t.clone() for n, t in base.items()}
        apply(live, base, d)
        expected.append(torch.cat([live[n].reshape(-1) for n in fw.offsets]))
    w0 = torch.cat([base[n].reshape(-1) for n in fw.offsets])
    plans = [cache.plan(d) for d in deltas]
    rng = random.Random(0)
    current = None
    for step in range(10_000):
        target = rng.randrange(-1, len(deltas))
        new = plans[target] if target >= 0 else None
        fused_switch(fw.flat, plans[current] if current is not None else None, new)
        if rng.random() < 0.05:  # idempotent: running a switch twice changes nothing
            fused_switch(fw.flat, plans[current] if current is not None else None, new)
        current = target if target >= 0 else None
        want = expected[current] if current is not None else w0
        assert torch.equal(fw.flat, want), f"step {step}: not bit-identical"
    # The parameters the model computes with are the buffer: the merged model serves.
    fused_switch(fw.flat, plans[current] if current is not None else None, plans[0])
    live = {n: t.clone() for n, t in base.items()}
    apply(live, base, deltas[0])
    assert all(torch.equal(p, live[n]) for n, p in model.named_parameters())


def test_plans_share_index_and_w0_per_structure() -> None:
    model = tiny_vit(num_classes=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    cache = PlanCache(FlatWeights.adopt(model, list(base)), base)
    a = cache.plan(_delta(model, "consolidator", STRUCTURES[0], 2))
    b = cache.plan(_delta(model, "consolidator", STRUCTURES[0], 4))
    c = cache.plan(_delta(model, "consolidator", STRUCTURES[1], 2))
    assert a.index is b.index and a.w0 is b.w0 and a.key == b.key
    assert not torch.equal(a.values, b.values) and c.key != a.key


def test_a_foreign_delta_is_refused_before_any_write() -> None:
    model = tiny_vit(num_classes=0)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    fw = FlatWeights.adopt(model, list(base))
    other = tiny_vit(num_classes=0, embed_dim=96, num_heads=3)
    before = fw.flat.clone()
    with pytest.raises(MgrError):
        PlanCache(fw, base).plan(_delta(other, "consolidator", STRUCTURES[0], 1))
    assert torch.equal(fw.flat, before)
