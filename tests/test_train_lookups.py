"""One ``mgr train`` reads its task by name once (then the write that records the version).

In process through click's CliRunner, the real catalog and a tiny real model: every lookup by
name goes through ``manager.catalog.tasks.get_task``, which is wrapped here to count calls (it
still runs). Before RunOptions and TaskInfo, a gated run looked the name up five times.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_SPEC

from manager.catalog import tasks

TRAIN = ("--epochs", "1", "--batch-size", "16", "--device", "cpu", "--json")


def test_a_gated_run_reads_the_task_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from manager.cli import main

    runner = CliRunner()
    env = {"MGR_HOME": str(home)}

    def mgr(*args: str) -> str:
        r = runner.invoke(main, list(args), env=env, catch_exceptions=False)
        assert r.exit_code == 0, r.output
        return r.stdout

    mgr("task", "add", "t", "--dataset", "synthetic:per_class=4", "--backbone", TINY_SPEC,
        "--weights", "random")  # fmt: skip
    mgr("train", "t", *TRAIN)  # v1: the champion, no comparison

    names: list[str] = []
    real = tasks.get_task

    def counted(s, name, *a, **kw):
        names.append(name)
        return real(s, name, *a, **kw)

    monkeypatch.setattr(tasks, "get_task", counted)
    out = json.loads(mgr("train", "t", *TRAIN, "--seed", "1"))
    assert out["version"] == 2
    assert out["promotion"]["champion_version"] == 1  # the gate did compare
    # The CLI's one read (handed to trainer and gate), and record_version's write transaction.
    assert names == ["t", "t"]
