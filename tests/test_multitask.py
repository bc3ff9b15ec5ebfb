"""Mixed-task batches (``manager.adapters.multitask``): each sample's logits equal its task's merged
model's, for Consolidator structures with and without shuffle, overlaps, and whole-only deltas."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_vit
from test_fused_switch import _delta

from manager.adapters.multitask import MultiTaskModel, branch_blocks
from manager.delta.apply import apply
from manager.delta.delta import ConsolidatorLayer
from manager.delta.structure import scatter_branches, scatter_union, support_numel
from manager.errors import MgrError

BF16_U = 2.0**-8  # bf16's unit roundoff: 8 significant bits

# (structure or None for a whole-only delta, classes)
TASKS = [
    (((4, False),), 3),
    (((4, False), (8, True)), 5),
    (((3, True),), 2),
    (None, 4),
    (((96, False), (48, True)), 6),  # small blocks: the multiply-add paths
]


def _task_delta(model, structure, classes: int, seed: int):
    m = copy.deepcopy(model)
    m.reset_classifier(classes)
    kind = "consolidator" if structure is not None else "bitfit"
    d = _delta(m, kind, structure, 2 * seed + 1)  # odd seed: with whole tensors (head included)
    if structure is None:
        d.layers.clear()
    return d


def _merged_logits(model, delta, classes: int, x: torch.Tensor) -> torch.Tensor:
    m = copy.deepcopy(model)
    m.reset_classifier(classes)
    base = {n: p.detach().clone() for n, p in m.named_parameters()}
    with torch.no_grad():
        apply(dict(m.named_parameters()), base, delta)
        return m.eval()(x)


def test_branch_blocks_sum_to_the_stored_delta() -> None:
    shape = (96, 48)
    for structure in (((4, False), (8, True)), ((16, False), (2, True)), ((3, True),)):
        gen = torch.Generator().manual_seed(0)
        values = torch.randn(support_numel(shape, structure), generator=gen)
        lay = ConsolidatorLayer(shape, structure, values)
        blocks = branch_blocks(lay)
        keys = list(blocks)
        dense = scatter_branches(shape, keys, [blocks[k] for k in keys])
        assert torch.equal(dense, scatter_union(values, shape, structure))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mixed_batch_equals_each_tasks_merged_model(dtype: torch.dtype) -> None:
    model = tiny_vit(num_classes=0).eval()
    deltas = [_task_delta(model, s, c, i) for i, (s, c) in enumerate(TASKS)]
    x = torch.randn(10, 3, 32, 32)
    ids = torch.tensor([0, 1, 2, 3, 1, 0, 3, 2, 4, 4])
    multi = MultiTaskModel(copy.deepcopy(model).to(dtype), deltas)
    got = multi(x.to(dtype), ids).float()
    assert got.shape == (10, max(c for _, c in TASKS))
    for t, (structure, classes) in enumerate(TASKS):
        rows = (ids == t).nonzero().flatten()
        # The reference is the merged model in float32.
        want = _merged_logits(model, deltas[t], classes, x[rows])
        scale = want.abs().max().clamp_min(1.0)
        if dtype == torch.float32:
            tol = 1e-5 * scale
        else:
            # The bound from the arithmetic, not from one CPU: a bf16 forward pass is as exact
            # as its roundings, and the merged model run in bf16 through this CPU's own kernels
            # measures what they cost here. The mixed batch takes the same roundings plus one
            # per adapted linear (x @ W0 and x @ dW summed): within twice that cost. u (bf16's
            # unit roundoff) floors it where the reference's errors happen to cancel.
            model16 = copy.deepcopy(model).to(dtype)
            ref16 = _merged_logits(model16, deltas[t], classes, x[rows].to(dtype))
            tol = 2 * torch.maximum((ref16.float() - want).abs().max(), BF16_U * scale)
            if structure is not None:  # not vacuous: the bound is far below the delta's effect
                whole = copy.deepcopy(deltas[t])
                whole.layers.clear()
                effect = (want - _merged_logits(model, whole, classes, x[rows])).abs().max()
                assert tol < effect / 4, (tol, effect)
        assert (got[rows, :classes] - want).abs().max() <= tol
        assert torch.isinf(got[rows, classes:]).all()  # padding: probability 0 after softmax


def test_refusals() -> None:
    model = tiny_vit(num_classes=0)
    lora = _delta(model, "lora", None, 1)
    with pytest.raises(MgrError, match="unmerged"):
        MultiTaskModel(copy.deepcopy(model), [lora])
    multi = MultiTaskModel(copy.deepcopy(model), [_task_delta(model, ((4, False),), 3, 0)])
    with pytest.raises(MgrError, match="task ids"):
        multi(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
