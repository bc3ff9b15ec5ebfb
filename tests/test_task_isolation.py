"""Training one task never changes another task's answers: A's logits stay bit-identical.

Task A is served (an in-process ``Switcher``, what ``mgr serve`` and export run on, and the
live files through ``mgr predict``) while task B is trained twice, promoted and switched to and
from; every frozen W0 and A's own delta are untouched, so A answers bit for bit as before.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from continual_helpers import synthetic_and_folder_tasks
from switch_helpers import fork_mgr, one_thread  # noqa: F401

from manager.switch.switcher import Switcher

TRAIN = ("--epochs", "1", "--batch-size", "24")


@pytest.mark.slow
def test_training_b_never_changes_a(tmp_path: Path) -> None:
    home, pics = synthetic_and_folder_tasks(tmp_path, "ta", "tb", {"x": 3, "y": 4})
    fork_mgr(home, "train", "ta", *TRAIN)
    image = str(pics / "test" / "x" / "000.png")
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    with Switcher(home) as sw:
        sw.switch("ta")
        with torch.no_grad():
            reference = sw.model(x).clone()
        predicted = fork_mgr(home, "predict", image, "--task", "ta", "--json").json()["predictions"]

        def a_answers_as_before() -> None:
            sw.switch("ta")
            with torch.no_grad():
                assert torch.equal(sw.model(x), reference)
            with Switcher(home) as fresh:  # a new process-like start from the catalog and files
                fresh.switch("ta")
                with torch.no_grad():
                    assert torch.equal(fresh.model(x), reference)

        fork_mgr(home, "train", "tb", *TRAIN)
        a_answers_as_before()
        fork_mgr(
            home, "train", "tb", *TRAIN, "--seed", "1", "--promote", "always", "--init", "champion"
        )
        for task, number in (("tb", None), ("ta", None), ("tb", 1), ("tb", None)):
            fork_mgr(home, "switch", task if number is None else f"{task}@{number}")
            sw.switch(task, number)
            a_answers_as_before()
        again = fork_mgr(home, "predict", image, "--task", "ta", "--json").json()["predictions"]
        assert again == predicted  # the live files: the same probabilities, to the last digit
