"""Warm starts: ``--init`` loads a recorded version's adapter exactly, or refuses in one line.

The unit tests hold the loading to its promise: a model warm-started from a delta exports that
same delta again, bit for bit (Consolidator branches split back from their consolidated sum,
overlapping supports included; LoRA's A and B; biases, norms, head), and head rows follow class
names. The CLI test checks the lineage and the refusals through the real command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import assert_clean_error, tiny_vit
from continual_helpers import synthetic_and_folder_tasks
from switch_helpers import fork_mgr, one_thread  # noqa: F401

from manager.delta.delta import ConsolidatorLayer, DeltaMeta
from manager.errors import MgrError
from manager.train.config import TrainConfig
from manager.train.methods import get_method
from manager.train.train_adapter import prepare_model
from manager.train.warmstart import InitSource, warm_start

TRAIN = ("--epochs", "1", "--batch-size", "24")


def _trained(method: str, num_classes: int, seed: int, **cfg):
    """A prepared tiny model with random (non-initial) adapter values, and its delta."""
    model = tiny_vit(num_classes=num_classes, seed=seed)
    m = get_method(method)
    prepare_model(model, m, TrainConfig.from_json(dict(method=method, **cfg)))
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    meta = DeltaMeta(method, "tiny", "0" * 64, torch.float32, num_classes)
    return model, m.export(model, meta), meta


def _fresh(method: str, num_classes: int, **cfg):
    model = tiny_vit(num_classes=num_classes, seed=5)
    m = get_method(method)
    prepare_model(model, m, TrainConfig.from_json(dict(method=method, **cfg)))
    return model, m


@pytest.mark.parametrize(
    ("method", "cfg"),
    [
        ("consolidator", {"groups": "96"}),
        ("consolidator", {"groups": "96,48s"}),  # two branches whose supports overlap
        ("lora", {"lora_rank": 4}),
        ("bitfit_ln", {}),
    ],
)
def test_a_warm_start_exports_the_init_delta_again(method: str, cfg: dict) -> None:
    _, delta, meta = _trained(method, 3, seed=1, **cfg)
    model, m = _fresh(method, 3, **cfg)
    got = warm_start(model, InitSource("t", 1, delta, ["a", "b", "c"]), ["a", "b", "c"])
    assert got == {"from": "t@1", "task": "t", "version": 1, "head": "kept", "head_rows_kept": 3}
    again = m.export(model, meta)
    assert again.layers.keys() == delta.layers.keys() and again.whole.keys() == delta.whole.keys()
    for key, layer in delta.layers.items():
        for part, t in layer.tensors().items():
            assert torch.equal(again.layers[key].tensors()[part], t), (key, part)
    for key, t in delta.whole.items():
        assert torch.equal(again.whole[key], t), key
    if method == "consolidator":
        assert all(isinstance(x, ConsolidatorLayer) for x in delta.layers.values())


def test_head_rows_follow_class_names() -> None:
    _, delta, _ = _trained("consolidator", 2, seed=1, groups="96")
    model, _ = _fresh("consolidator", 3, groups="96")
    fresh = model.head.weight.detach().clone()
    got = warm_start(model, InitSource("t", 1, delta, ["a", "b"]), ["b", "x", "a"])
    assert (got["head"], got["head_rows_kept"]) == ("remapped", 2)
    w = model.head.weight.detach()
    assert torch.equal(w[0], delta.whole["head.weight"][1])  # "b" kept its row, at its index
    assert torch.equal(w[2], delta.whole["head.weight"][0])  # "a"
    assert torch.equal(w[1], fresh[1])  # "x" is new: the fresh head's row
    model, _ = _fresh("consolidator", 3, groups="96")
    grown = warm_start(model, InitSource("t", 1, delta, ["a", "b"]), ["a", "b", "c"])
    assert grown["head"] == "grown"
    model, _ = _fresh("consolidator", 2, groups="96")
    fresh = model.head.weight.detach().clone()
    other = warm_start(model, InitSource("o", 4, delta, ["a", "b"]), ["cat", "dog"])
    assert other["head"] == "reinitialised" and torch.equal(model.head.weight, fresh)
    assert torch.equal(model.blocks[0].norm1.weight, delta.whole["blocks.0.norm1.weight"])


def test_other_structures_and_methods_are_refused() -> None:
    _, delta, _ = _trained("consolidator", 2, seed=1, groups="96")
    model, _ = _fresh("consolidator", 2, groups="48")
    with pytest.raises(MgrError, match=r"structure g=96, this run g=48"):
        warm_start(model, InitSource("t", 1, delta, ["a", "b"]), ["a", "b"])
    model, _ = _fresh("lora", 2, lora_rank=4)
    with pytest.raises(MgrError, match="same method and structure"):
        warm_start(model, InitSource("t", 1, delta, ["a", "b"]), ["a", "b"])
    _, lora, _ = _trained("lora", 2, seed=1, lora_rank=4)
    model, _ = _fresh("lora", 2, lora_rank=8)
    with pytest.raises(MgrError, match="LoRA rank 4, this run 8"):
        warm_start(model, InitSource("t", 1, lora, ["a", "b"]), ["a", "b"])


@pytest.mark.slow
def test_init_through_the_cli(tmp_path: Path) -> None:
    home, _ = synthetic_and_folder_tasks(tmp_path, "g", "h", {"cat": 0, "dog": 1})
    fork_mgr(home, "task", "add", "deep", "--dataset", "synthetic:per_class=4",
             "--weights", "random", "--backbone", "deit_tiny_patch16_224:img_size=32,depth=3",
             )  # fmt: skip

    refused = fork_mgr(home, "train", "g", *TRAIN, "--init", "champion", ok=False)
    assert_clean_error(refused)
    assert "has no champion yet" in refused.stderr
    fork_mgr(home, "train", "g", *TRAIN)
    warm = fork_mgr(
        home, "train", "g", *TRAIN, "--init", "champion", "--seed", "1", "--json"
    ).json()
    lin = fork_mgr(home, "versions", f"g@{warm['version']}", "--json").json()[0]["lineage"]
    assert lin["parent"] == 1
    assert lin["init"] == {"from": "g@1", "task": "g", "version": 1, "head": "kept",
                           "head_rows_kept": 6}  # fmt: skip
    assert "init g@1" in fork_mgr(home, "versions", "g").stdout  # the table (it may wrap the rest)

    # Another task on the same backbone and structure: the head starts fresh (no shared class).
    other = fork_mgr(home, "train", "h", *TRAIN, "--init", "g@1", "--json").json()
    init = fork_mgr(home, "versions", f"h@{other['version']}", "--json").json()[0]["lineage"][
        "init"
    ]
    assert (init["from"], init["head"]) == ("g@1", "reinitialised")

    for args, words in (
        (("g", "--init", "g@1", "--groups", "48"), "structure g=96, this run g=48"),
        (("g", "--init", "g@1", "--method", "lora"), "same method and structure"),
        (("deep", "--init", "g@1"), "another backbone"),
        (("g", "--init", "g@9"), "no version 9"),
        (("g", "--init", "nosuch@1"), "nosuch"),
    ):
        bad = fork_mgr(home, "train", *args, *TRAIN, ok=False)
        assert_clean_error(bad)
        assert words in bad.stderr, bad.stderr
    assert [v["number"] for v in fork_mgr(home, "versions", "g", "--json").json()] == [1, 2]
