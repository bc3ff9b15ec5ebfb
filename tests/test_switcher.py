"""The in-memory `Switcher`: bit-exact after 1,000 random switches, refuses bad artifacts; its
serving paths: low precision (the cast of the exact merge, bit for bit) and a compiled model that
serves every task across switches without recompiling."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch
from switch_helpers import catalog_versions, one_thread  # noqa: F401

from manager.delta.apply import apply
from manager.delta.delta import Delta
from manager.errors import MgrError
from manager.switch import Switcher

pytestmark = pytest.mark.trained_home  # `home`: a copy of the trained switch template


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


def test_thousand_random_switches_are_bit_exact(home):
    targets = catalog_versions(home)  # "task@N" -> artifact; six versions of three tasks
    assert len(targets) >= 6
    with Switcher(home) as sw:
        sw.switch("shapes")  # loads the backbone
        expected = {None: fresh_merge(sw, home, None)}
        for label, rel in targets.items():
            expected[label] = fresh_merge(sw, home, rel)
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


def test_predict_matches_a_fresh_model(home):
    from manager.registry.backbones import load_backbone

    with Switcher(home) as sw:
        sw.switch("digits", 1)
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        probs = sw.predict(x)
        assert probs.shape == (4, 10)
        assert torch.allclose(probs.sum(-1), torch.ones(4))
        ref = load_backbone(sw.home, _row(sw), num_classes=10).eval()
        merged = fresh_merge(sw, home, catalog_versions(home)["digits@1"])
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
def test_bad_artifact_is_refused_and_the_model_stays(home, damage):
    path = home / catalog_versions(home)["pets3@2"]
    with Switcher(home) as sw:
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


def test_unknown_targets_are_clear_errors(home):
    with Switcher(home) as sw:
        with pytest.raises(MgrError, match="unknown task"):
            sw.switch("nope")
        with pytest.raises(MgrError, match="has no version 9"):
            sw.switch("pets3", 9)
        assert not sw.switch(None)  # nothing loaded, nothing to do


def test_a_task_on_another_backbone_is_refused(home):
    from switch_helpers import add_python_tasks

    from manager.backbone import build_backbone
    from manager.catalog import open_catalog, tasks
    from manager.home import Home
    from manager.registry.backbones import materialise_backbone

    h = Home.resolve(home)
    cat = open_catalog(h)
    other = build_backbone("deit_tiny_patch16_224:img_size=32,depth=2", "random")
    with torch.no_grad():
        other.blocks[0].attn.qkv.weight.add_(1.0)  # other weights, other content hash
    with cat.session() as s:
        row = materialise_backbone(s, h, other, "deit_tiny_patch16_224:img_size=32,depth=2", "x")
        tasks.add_task(s, name="carrier", dataset="synthetic", class_names=["a", "b"])
        tasks.get_task(s, "carrier").backbone_id = row.id
    cat.close()
    add_python_tasks(home, {"stranger": (2, [("linear", None, torch.float32)])}, "carrier")
    with Switcher(home) as sw:
        sw.switch("shapes")
        before = copy.deepcopy(params(sw))
        with pytest.raises(MgrError, match="all tasks switched here must share one"):
            sw.switch("stranger")
        assert_bit_identical(params(sw), before)


# -- serving paths: low precision and torch.compile ------------------------------------------


def _labels(home: Path) -> list[str]:
    return list(catalog_versions(home))


def _switch(sw: Switcher, label: str) -> None:
    task, number = label.split("@")
    sw.switch(task, int(number))


def test_bf16_serving_is_the_cast_of_the_exact_merge(home):
    labels = _labels(home)
    with Switcher(home, precision="bf16") as sw:
        _switch(sw, labels[0])
        assert all(t.dtype == torch.float32 for t in sw.base.values())  # W0 stays exact
        expected = {lb: fresh_merge(sw, home, catalog_versions(home)[lb]) for lb in labels}
        rng = random.Random(3)
        for _ in range(60):
            label = rng.choice(labels)
            _switch(sw, label)
            for n, p in sw.model.named_parameters():
                assert p.dtype == torch.bfloat16
                assert torch.equal(p, expected[label][n].to(torch.bfloat16)), (label, n)
        x = torch.randn(2, 3, 32, 32)
        assert sw.predict(x).dtype == torch.float32


def test_unknown_precision_is_refused(home):
    with pytest.raises(MgrError, match="unknown precision"):
        Switcher(home, precision="fp8")


@pytest.mark.slow
def test_compiled_model_serves_every_task_without_recompiling(home):
    from torch._dynamo.utils import counters

    labels = _labels(home)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with Switcher(home) as eager, Switcher(home, compile=True) as sw:
        want = {}
        for label in labels:
            _switch(eager, label)
            want[label] = eager.logits(x)
        torch._dynamo.reset()
        counters.clear()
        for label in labels:  # compiles once, on the first call
            _switch(sw, label)
            sw.logits(x)
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1
        rng = random.Random(5)
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(100):
                label = rng.choice(labels)
                _switch(sw, label)
                got = sw.logits(x)
                assert got.shape == want[label].shape
                torch.testing.assert_close(got, want[label], rtol=1e-4, atol=1e-5)
        assert counters["stats"]["unique_graphs"] == graphs


def test_predict_precision_through_the_cli(cli, tmp_path):
    from conftest import assert_clean_error
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    mgr = cli  # in process: the arithmetic is the same, three interpreter starts are not
    fp32 = mgr.json("predict", str(img), "--task", "digits", "--top-k", "3")
    bf16 = mgr.json("predict", str(img), "--task", "digits", "--top-k", "3", "--precision", "bf16")
    a, b = fp32["predictions"][0]["top"], bf16["predictions"][0]["top"]
    assert a[0]["index"] == b[0]["index"]
    assert abs(a[0]["probability"] - b[0]["probability"]) < 2e-2
    assert_clean_error(mgr("predict", str(img), "--precision", "fp8", ok=False))
