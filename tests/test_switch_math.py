"""Stage 2: switching by exact writes is bit-exact, idempotent, O(delta), and refuses strangers."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from conftest import tiny_vit
from torch.utils._python_dispatch import TorchDispatchMode

from manager.adapters import Branch, ConsolidatorConfig, inject_consolidator
from manager.adapters.fold import consolidate
from manager.adapters.inject import METHOD_GROUPS, select_params
from manager.delta.apply import SupportCache, apply, check_compatible, restore, switch
from manager.delta.delta import Delta
from manager.delta.structure import covers, scatter_union
from manager.errors import MgrError

STRUCTURES = [
    ((8, False),),
    ((4, True), (8, False)),  # two views
    ((4, False), (4, True)),  # partial overlap: index segment
    ((3, True),),  # reorder without a single view: index fallback
    ((16, False), (2, True)),
]


def make_delta(base, branches, seed, dtype=torch.float32) -> Delta:
    model = inject_consolidator(
        copy.deepcopy(base), ConsolidatorConfig(tuple(Branch(*b) for b in branches))
    )
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in select_params(model, METHOD_GROUPS["consolidator"]).values():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-2)
    return consolidate(model, backbone_name="tiny", backbone_hash="h0", dtype=dtype)


def dense_merge(w0: dict, delta: Delta | None) -> dict:
    """An independent reference: W0 + a dense dW (zero off the support), whole tensors set."""
    out = {n: t.clone() for n, t in w0.items()}
    if delta is None:
        return out
    for name, lay in delta.layers.items():
        out[name] = w0[name] + scatter_union(lay.values.to(w0[name].dtype), lay.shape, lay.branches)
    for name, t in delta.whole.items():
        out[name] = t.to(w0[name].dtype)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Switches are many small strided writes: intra-op threads only add sync (and on a shared
    2-core machine, long waits)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup():
    base = tiny_vit(num_classes=3, seed=0)
    w0 = {n: p.detach().clone() for n, p in base.named_parameters()}
    deltas = [make_delta(base, s, seed=i) for i, s in enumerate(STRUCTURES)]
    deltas.append(make_delta(base, STRUCTURES[1], seed=99, dtype=torch.bfloat16))
    return base, w0, deltas


def assert_state(live: dict, expected: dict) -> None:
    for name, t in expected.items():
        assert torch.equal(live[name], t), name


@pytest.mark.parametrize("cached", [False, True])
def test_thousand_random_switches_are_bit_exact(setup, cached):
    base, w0, deltas = setup
    cache = SupportCache() if cached else None
    model = copy.deepcopy(base)
    live = dict(model.named_parameters())
    expected = [dense_merge(w0, d) for d in deltas]
    rng = random.Random(0)
    current = None
    for step in range(1000):
        nxt = rng.randrange(len(deltas) + 1)
        nxt = None if nxt == len(deltas) else nxt
        switch(
            live,
            w0,
            None if current is None else deltas[current],
            None if nxt is None else deltas[nxt],
            cache=cache,
        )
        current = nxt
        if current is None:
            assert_state(live, w0)
        elif step % 10 == 0 or step > 990:
            assert_state(live, expected[current])
    # and a fresh merge via apply on a clean copy agrees with the independent dense one
    for d, exp in zip(deltas, expected, strict=True):
        fresh = {n: t.clone() for n, t in w0.items()}
        apply(fresh, w0, d, cache=cache)
        assert_state(fresh, exp)


def test_idempotent_and_resumable(setup):
    _, w0, deltas = setup
    old, new = deltas[2], deltas[3]
    live = {n: t.clone() for n, t in w0.items()}
    apply(live, w0, old)
    apply(live, w0, old)  # applying twice changes nothing
    assert_state(live, dense_merge(w0, old))
    # a crash half-way through restoring `old`: run the whole switch again
    half = Delta(dict(list(old.layers.items())[:3]), {}, old.meta)
    restore(live, w0, half)
    switch(live, w0, old, new)
    assert_state(live, dense_merge(w0, new))
    switch(live, w0, new, None)
    assert_state(live, w0)


class _Sizes(TorchDispatchMode):
    """The largest tensor any op allocates (views and in-place results share an input's storage)."""

    def __init__(self):
        super().__init__()
        self.biggest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self.biggest = max(self.biggest, t.numel())
        return out


@pytest.mark.parametrize("cached", [False, True])
def test_switch_never_builds_dense_tensors(setup, cached):
    _, w0, deltas = setup
    cache = SupportCache() if cached else None
    live = {n: t.clone() for n, t in w0.items()}
    apply(live, w0, deltas[0])
    for old, new in [(0, 2), (2, 3), (3, 4), (4, 1), (1, 0)]:
        switch(live, w0, deltas[old], deltas[new], cache=cache)  # warm the caches first
        with _Sizes() as sizes:
            switch(live, w0, deltas[new], deltas[old], cache=cache)
        # no allocation beyond one layer's stored values (a dense fc1 dW would be 147,456)
        layers = [lay for d in (deltas[old], deltas[new]) for lay in d.layers.values()]
        assert 0 < sizes.biggest <= max(lay.values.numel() for lay in layers)


def test_other_backbone_refused(setup):
    _, w0, deltas = setup
    delta = deltas[0]
    shapes = {n: tuple(t.shape) for n, t in w0.items()}
    check_compatible(delta, "tiny", "h0", shapes)
    with pytest.raises(MgrError, match="made for tiny"):
        check_compatible(delta, "tiny", "other-hash", shapes)
    small = tiny_vit(num_classes=3, embed_dim=96)
    small_shapes = {n: tuple(p.shape) for n, p in small.named_parameters()}
    with pytest.raises(MgrError, match=r"blocks\.0\.attn\.qkv\.weight is 576x192"):
        check_compatible(delta, "tiny", "h0", small_shapes)
    # apply refuses before writing anything
    live = {n: p.detach().clone() for n, p in small.named_parameters()}
    before = {n: t.clone() for n, t in live.items()}
    with pytest.raises(MgrError, match="another backbone"):
        apply(live, dict(before), delta)
    assert_state(live, before)
    with pytest.raises(MgrError, match="no tensor"):
        apply({}, w0, delta)
    wrong_head = {**{n: t.clone() for n, t in w0.items()}, "head.weight": torch.zeros(7, 192)}
    with pytest.raises(MgrError, match="another number of classes"):
        apply(wrong_head, w0, delta)


def test_restore_leaves_heads_the_base_lacks(setup):
    _, w0, deltas = setup
    live = {n: t.clone() for n, t in w0.items()}
    base_wo_head = {n: t for n, t in w0.items() if not n.startswith("head.")}
    apply(live, base_wo_head, deltas[0])
    restore(live, base_wo_head, deltas[0])
    assert torch.equal(live["head.weight"], deltas[0].whole["head.weight"])
    assert torch.equal(live["blocks.0.norm1.weight"], w0["blocks.0.norm1.weight"])


def test_covers():
    assert covers((16, 16), ((4, False),), ((8, False),))  # g=8 blocks sit inside g=4 blocks
    assert not covers((16, 16), ((8, False),), ((4, False),))
    assert not covers((16, 16), ((4, False),), ((4, True),))
    assert covers((16, 16), ((4, True), (4, False)), ((4, False),))
    assert covers((12, 24), ((6, True), (3, False)), ((3, False), (6, True)))  # order is irrelevant


def test_dense_and_lora_kinds(tmp_path):
    """Other layer kinds share the file format and the write-only switching."""
    from manager.delta.delta import DeltaMeta, DenseLayer, LoRALayer

    gen = torch.Generator().manual_seed(0)
    w0 = {"a.weight": torch.randn(6, 4, generator=gen)}
    w0["b.weight"] = torch.randn(5, 3, generator=gen)
    dense = torch.randn(6, 4, generator=gen)
    lora_a, lora_b = torch.randn(2, 3, generator=gen), torch.randn(5, 2, generator=gen)
    delta = Delta(
        {"a.weight": DenseLayer((6, 4), dense), "b.weight": LoRALayer((5, 3), lora_a, lora_b)},
        {},
        DeltaMeta("lora", "toy", "h"),
    )
    (tmp_path / "d.safetensors").write_bytes(delta.to_bytes())  # not a home: no Store needed
    back = Delta.load(tmp_path / "d.safetensors")
    assert torch.equal(back.layers["b.weight"].B, lora_b)
    live = {n: t.clone() for n, t in w0.items()}
    apply(live, w0, back)
    assert torch.equal(live["a.weight"], w0["a.weight"] + dense)
    assert torch.allclose(live["b.weight"], w0["b.weight"] + lora_b @ lora_a, atol=1e-6)
    switch(live, w0, back, None)
    assert_state(live, w0)
