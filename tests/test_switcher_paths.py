"""The Switcher's serving paths: low precision (the cast of the exact merge, bit for bit) and a
compiled model that serves every task across switches without recompiling."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from switch_helpers import catalog_versions, one_thread  # noqa: F401
from test_switcher import fresh_merge

from manager.errors import MgrError
from manager.switch import Switcher

pytestmark = pytest.mark.trained_home  # `home`: a copy of the trained switch template


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


def test_predict_precision_through_the_cli(home, tmp_path):
    from conftest import CLI, assert_clean_error
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    mgr = CLI(home)
    fp32 = mgr.json("predict", str(img), "--task", "digits", "--top-k", "3")
    bf16 = mgr.json("predict", str(img), "--task", "digits", "--top-k", "3", "--precision", "bf16")
    a, b = fp32["predictions"][0]["top"], bf16["predictions"][0]["top"]
    assert a[0]["index"] == b[0]["index"]
    assert abs(a[0]["probability"] - b[0]["probability"]) < 2e-2
    assert_clean_error(mgr("predict", str(img), "--precision", "fp8", ok=False))
