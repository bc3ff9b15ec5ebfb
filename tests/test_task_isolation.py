"""Training one task never changes another task's answers: A's logits stay bit-identical.

Task A is served (an in-process ``Switcher``, what ``mgr serve`` and export run on, and the
live files through ``mgr predict``) while task B is trained twice, promoted and switched to and
from; every frozen W0 and A's own delta are untouched, so A answers bit for bit as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC
from continual_helpers import write_folder
from switch_helpers import fork_server, one_thread  # noqa: F401

from manager.switch.switcher import Switcher

TRAIN = ("--epochs", "1", "--batch-size", "24")


def mgr(home: Path, *args: str, ok: bool = True):
    return fork_server().run(home, *args, ok=ok)


@pytest.mark.slow
def test_training_b_never_changes_a(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    add = ("--backbone", TINY_SPEC, "--weights", "random")
    mgr(home, "task", "add", "ta", "--dataset", "synthetic:per_class=4", *add)
    pics = write_folder(tmp_path / "pics", {"x": 3, "y": 4})
    mgr(home, "task", "add", "tb", "--dataset", "imagefolder", "--root", str(pics), *add)
    mgr(home, "train", "ta", *TRAIN)
    image = str(pics / "test" / "x" / "000.png")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    with Switcher(home) as sw:
        sw.switch("ta")
        with torch.no_grad():
            reference = sw.model(x).clone()
        predicted = mgr(home, "predict", image, "--task", "ta", "--json").json()["predictions"]

        def a_answers_as_before() -> None:
            sw.switch("ta")
            with torch.no_grad():
                assert torch.equal(sw.model(x), reference)
            with Switcher(home) as fresh:  # a new process-like start from the catalog and files
                fresh.switch("ta")
                with torch.no_grad():
                    assert torch.equal(fresh.model(x), reference)

        mgr(home, "train", "tb", *TRAIN)
        a_answers_as_before()
        mgr(home, "train", "tb", *TRAIN, "--seed", "1", "--promote", "always", "--init", "champion")
        for task, number in (("tb", None), ("ta", None), ("tb", 1), ("tb", None)):
            mgr(home, "switch", task if number is None else f"{task}@{number}")
            sw.switch(task, number)
            a_answers_as_before()
        again = mgr(home, "predict", image, "--task", "ta", "--json").json()["predictions"]
        assert again == predicted  # the live files: the same probabilities, to the last digit
