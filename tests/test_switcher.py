"""The in-memory `Switcher`: bit-exact after 1,000 random switches, refuses bad artifacts."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from switch_helpers import catalog_versions, copy_home, one_thread, template_home  # noqa: F401

from manager.delta.apply import apply
from manager.delta.delta import Delta
from manager.errors import MgrError
from manager.switch import Switcher


@pytest.fixture
def trained(tmp_path_factory, tmp_path) -> Path:
    return copy_home(template_home(tmp_path_factory.getbasetemp()), tmp_path / "home")


def fresh_merge(sw: Switcher, home: Path, rel: str | None) -> dict[str, torch.Tensor]:
    """An independent model: W0 (from the backbone file) + the delta through `apply`."""
    from manager.registry.backbones import load_backbone

    with sw.catalog.session(write=False) as s:
        from manager.catalog.models import Backbone

        row = s.get(Backbone, sw.backbone.id)
        s.expunge(row)
    if rel is None:
        model = load_backbone(sw.home, row, num_classes=0)
        return {n: p.detach() for n, p in model.named_parameters()}
    delta = Delta.load(home / rel)
    model = load_backbone(sw.home, row, num_classes=delta.meta.num_classes)
    live = dict(model.named_parameters())
    w0 = {n: t.detach().clone() for n, t in live.items() if n in sw.base}
    apply(live, w0, delta)
    return {n: p.detach() for n, p in model.named_parameters()}


def params(sw: Switcher) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in sw.model.named_parameters()}


def assert_bit_identical(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for n, t in expected.items():
        assert got[n].dtype == t.dtype and torch.equal(got[n], t), n


def test_thousand_random_switches_are_bit_exact(trained):
    targets = catalog_versions(trained)  # "task@N" -> artifact; six versions of three tasks
    assert len(targets) >= 6
    with Switcher(trained) as sw:
        sw.switch("shapes")  # loads the backbone
        expected = {None: fresh_merge(sw, trained, None)}
        for label, rel in targets.items():
            expected[label] = fresh_merge(sw, trained, rel)
        original = {n: t.clone() for n, t in sw.base.items()}
        rng = random.Random(1234)
        choices = [*targets, None]
        current = "shapes@1"
        changed = 0
        for _ in range(1000):
            label = rng.choice(choices)
            task, number = (None, None) if label is None else label.split("@")
            changed += sw.switch(task, None if number is None else int(number))
            current = label
            assert_bit_identical(params(sw), expected[current])
        assert changed > 800  # the rest were no-ops (the same target twice in a row)
        sw.switch(None)
        assert_bit_identical(params(sw), original)  # W0 again, bit for bit, no head
        assert sw.model.num_classes == 0
        assert_bit_identical(sw.base, original)  # W0 itself was never written


def test_predict_matches_a_fresh_model(trained):
    from manager.registry.backbones import load_backbone

    with Switcher(trained) as sw:
        sw.switch("digits", 1)
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        probs = sw.predict(x)
        assert probs.shape == (4, 10)
        assert torch.allclose(probs.sum(-1), torch.ones(4))
        ref = load_backbone(sw.home, _row(sw), num_classes=10).eval()
        merged = fresh_merge(sw, trained, catalog_versions(trained)["digits@1"])
        ref.load_state_dict(merged, strict=False)
        with torch.no_grad():
            assert torch.equal(ref(x).softmax(-1), probs)
        assert sw.class_names[0] == "digits-c0"
        sw.switch(None)
        with pytest.raises(MgrError, match="no task is live"):
            sw.predict(x)


def _row(sw: Switcher):
    from manager.catalog.models import Backbone

    with sw.catalog.session(write=False) as s:
        row = s.get(Backbone, sw.backbone.id)
        s.expunge(row)
    return row


@pytest.mark.parametrize("damage", ["flip", "truncate", "missing"])
def test_bad_artifact_is_refused_and_the_model_stays(trained, damage):
    path = trained / catalog_versions(trained)["pets3@2"]
    with Switcher(trained) as sw:
        sw.switch("digits", 2)
        before = copy.deepcopy(params(sw))
        if damage == "flip":
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0xFF
            path.write_bytes(bytes(data))
        elif damage == "truncate":
            path.write_bytes(path.read_bytes()[:-7])
        else:
            path.unlink()
        word = "missing" if damage == "missing" else "corrupt"
        with pytest.raises(MgrError, match=f"artifact of pets3@2 is {word}"):
            sw.switch("pets3", 2)
        assert sw.current.label == "digits@2"
        assert_bit_identical(params(sw), before)
        assert sw.switch("pets3", 1)  # other versions still work


def test_unknown_targets_are_clear_errors(trained):
    with Switcher(trained) as sw:
        with pytest.raises(MgrError, match="unknown task"):
            sw.switch("nope")
        with pytest.raises(MgrError, match="has no version 9"):
            sw.switch("pets3", 9)
        assert not sw.switch(None)  # nothing loaded, nothing to do


def test_a_task_on_another_backbone_is_refused(trained):
    from switch_helpers import add_python_tasks

    from manager.backbone import build_backbone
    from manager.catalog import open_catalog, tasks
    from manager.home import Home
    from manager.registry.backbones import materialise_backbone

    home = Home.resolve(trained)
    cat = open_catalog(home)
    other = build_backbone("deit_tiny_patch16_224:img_size=32,depth=2", "random")
    with torch.no_grad():
        other.blocks[0].attn.qkv.weight.add_(1.0)  # other weights, other content hash
    with cat.session() as s:
        row = materialise_backbone(s, home, other, "deit_tiny_patch16_224:img_size=32,depth=2", "x")
        tasks.add_task(s, name="carrier", dataset="synthetic", class_names=["a", "b"])
        tasks.get_task(s, "carrier").backbone_id = row.id
    cat.close()
    add_python_tasks(trained, {"stranger": (2, [("linear", None, torch.float32)])}, "carrier")
    with Switcher(trained) as sw:
        sw.switch("shapes")
        before = copy.deepcopy(params(sw))
        with pytest.raises(MgrError, match="all tasks switched here must share one"):
            sw.switch("stranger")
        assert_bit_identical(params(sw), before)
