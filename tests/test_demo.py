"""README's main job, offline: tasks trained, switched, predicted, reported."""

from __future__ import annotations


def test_offline_demo_runs_end_to_end(mgr, home):
    proc = mgr("demo", "--offline", "--epochs", "1")
    assert "$ mgr train shapes" in proc.stdout and "$ mgr storage" in proc.stdout
    assert "verified:  yes" in proc.stdout
    tasks = {t["name"]: t for t in mgr.json("task", "list")}
    assert set(tasks) == {"shapes", "shapes4"}
    assert tasks["shapes4"]["versions"] == 2 and tasks["shapes4"]["active_version"] == 1
    status = mgr.json("status")
    assert status["verified"] is True, status
    # Run again on the same home: tasks are reused, new versions are added.
    mgr("demo", "--offline", "--epochs", "1")
    assert mgr.json("versions", "shapes")[-1]["number"] == 2
