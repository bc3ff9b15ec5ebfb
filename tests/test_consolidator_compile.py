"""torch.compile sees the whole adapted model as one graph, and computes what eager computes."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_vit

from manager.adapters.consolidator import ConsolidatorLinear
from manager.train.config import TrainConfig
from manager.train.methods import get_method
from manager.train.train_adapter import prepare_model


@pytest.mark.parametrize(
    "drop_path",
    # Each compiles (8-15 s): the slow lane; test_train_precision compiles in the fast one.
    [pytest.param(0.0, marks=pytest.mark.slow), pytest.param(0.2, marks=pytest.mark.slow)],
)
def test_compiled_training_step_has_no_graph_breaks_and_matches_eager(drop_path):
    model = tiny_vit(num_classes=4)
    # Both training forms (merged weight; masked branches), reordered and strided branches alike.
    cfg = TrainConfig.from_json(dict(groups="8,4s,3s", drop_path=drop_path))
    prepare_model(model, get_method("consolidator"), cfg)
    assert any(isinstance(m, ConsolidatorLinear) for m in model.modules())
    model.train()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))

    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1

    def step(fn):
        torch.manual_seed(7)  # the DropPath masks come from the global generator
        model.zero_grad(set_to_none=True)
        out = fn(x)
        out.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return out.detach(), grads

    torch._dynamo.reset()
    # aot_eager: the real dynamo graph and AOT-autograd backward, without inductor's C++ build
    # (minutes on two cores); it draws the masks with the eager generator, so they match.
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got, got_grads = step(compiled)
    want, want_grads = step(model)
    torch._dynamo.reset()
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)
    assert got_grads.keys() == want_grads.keys() and any("branches" in n for n in got_grads)
    for name, g in want_grads.items():
        assert torch.allclose(got_grads[name], g, rtol=1e-4, atol=1e-6), name
    assert model.blocks[0].attn.qkv.weight.grad is None  # W0 stays frozen under compile too
