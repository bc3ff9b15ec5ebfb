"""The `mgr` CLI: tasks, budgets, storage, history and errors in process (click's CliRunner);
concurrent adds and the import cost of light commands in real subprocesses."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CLI, ROOT, TINY_SPEC, InProcessCLI, assert_clean_error

from manager.catalog import Catalog, open_catalog, tasks, versions
from manager.catalog.deployment import get_deployment
from manager.home import Home
from manager.store.fs import Store


def _catalog(home: Path) -> Catalog:
    """The same catalog the CLI uses, opened in process (explicit URL: ignore MGR_DB_URL)."""
    return open_catalog(Home(home), url=f"sqlite:///{home / 'catalog.db'}")


def _dump(home: Path) -> list[str]:
    con = sqlite3.connect(home / "catalog.db")
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_task_lifecycle(cli: InProcessCLI, home: Path) -> None:
    added = cli.json(
        "task", "add", "shapes", "--dataset", "synthetic", "--backbone", TINY_SPEC,
        "--weights", "random", "--budget", "300KB",
    )  # fmt: skip
    assert added["name"] == "shapes" and added["budget_bytes"] == 300_000
    assert added["num_classes"] == len(added["class_names"]) > 0
    assert added["weights"] == "random" and added["versions"] == []

    # A trained version, as the trainer would record it (artifact file + row), promoted and live.
    cat = _catalog(home)
    with cat.session() as s:
        task = tasks.get_task(s, "shapes")
        store = Store(Home(home))
        artifact = store.artifact("shapes", 1)
        store.write_bytes(artifact, b"x" * 12_000)
        v = versions.add_version(
            s, task, method="consolidator", structure=[[4, False]], bytes=12_000,
            content_hash="a" * 64, path=store.rel(artifact),
        )  # fmt: skip
        versions.promote(s, task, v)
        dep = get_deployment(s, Home(home).host)
        dep.task_id, dep.version_id = task.id, v.id
    cat.close()

    [row] = cli.json("task", "list")
    assert (row["name"], row["versions"], row["active_version"]) == ("shapes", 1, 1)
    assert row["used_bytes"] == 12_000 and row["budget_bytes"] == 300_000
    shown = cli.json("task", "show", "shapes")
    assert [v["number"] for v in shown["versions"]] == [1]
    assert "v1" in cli("task", "show", "shapes").stdout

    assert "set to 1.50 MB" in cli("budget", "set", "1.5MB").stdout
    cli("budget", "set", "100KiB", "--task", "shapes")
    budgets = cli.json("budget", "show")
    assert budgets["global"] == {"max_bytes": 1_500_000, "used_bytes": 12_000}
    assert budgets["tasks"] == [{"task": "shapes", "max_bytes": 102_400, "used_bytes": 12_000}]

    report = cli.json("storage")
    [t] = report["tasks"]
    backbone = t["backbone_bytes"]
    assert backbone and backbone % 4 == 0
    [v1] = t["versions"]
    assert v1["bytes"] == v1["on_disk_bytes"] == 12_000 and v1["active"] and not v1["missing"]
    assert v1["pct_of_backbone"] == pytest.approx(100 * 12_000 / backbone)
    assert t["budget_used_pct"] == pytest.approx(100 * 12_000 / 102_400)
    assert t["full_finetune_bytes"] > backbone
    assert report["totals"]["global_budget_used_pct"] == pytest.approx(0.8)
    text = cli("storage").stdout
    assert "shapes" in text and "v1" in text and "full fine-tuned copy" in text

    # The live task is protected; --force removes it, its versions and its files.
    assert_clean_error(cli("task", "remove", "shapes", "--yes", ok=False))
    assert "removed" in cli("task", "remove", "shapes", "--yes", "--force").stdout
    assert cli.json("task", "list") == []
    assert not (home / "artifacts" / "shapes").exists()

    kinds = [(e["kind"], e["task"]) for e in cli.json("history")]
    assert kinds == [
        ("task_added", "shapes"),
        ("budget_set", "shapes"),
        ("version_created", "shapes"),
        ("promoted", "shapes"),
        ("budget_set", None),
        ("budget_set", "shapes"),
        ("task_removed", "shapes"),
    ]


def test_errors_are_one_line_and_change_nothing(cli: InProcessCLI, home: Path) -> None:
    cat = _catalog(home)
    with cat.session() as s:
        tasks.add_task(s, name="pets", dataset="pets", class_names=["a", "b"], budget_bytes=10)
    cat.close()
    before = _dump(home)
    bad = [
        ("task", "add", "pets", "--dataset", "synthetic"),  # duplicate
        ("task", "add", "Pets!", "--dataset", "synthetic"),  # bad name
        ("task", "add", "new", "--dataset", "synthetic", "--budget", "12XB"),  # bad size
        ("task", "add", "new", "--dataset", "no-such-set"),  # unknown data set
        ("task", "show", "nope"),  # unknown task
        ("task", "remove", "pets"),  # no --yes and no terminal
        ("budget", "set", "lots"),  # bad size
        ("budget", "set", "1MB", "--task", "nope"),  # unknown task
        ("task", "add", "--dataset", "synthetic"),  # click usage error: missing NAME
    ]
    for args in bad:
        proc = cli(*args, ok=False)
        assert_clean_error(proc)
        assert proc.stdout == "", args
    assert _dump(home) == before
    assert [t["name"] for t in cli.json("task", "list")] == ["pets"]


@pytest.mark.slow
def test_two_adds_at_once_on_a_fresh_home(mgr: CLI, home: Path) -> None:
    """Both processes migrate-or-wait and insert; neither sees 'database is locked'."""
    cmds = [("flowers", "flowers102"), ("shapes", "synthetic")]
    procs = [mgr.popen("task", "add", name, "--dataset", ds) for name, ds in cmds]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    by_name = {t["name"]: t for t in mgr.json("task", "list")}
    assert set(by_name) == {"flowers", "shapes"}
    assert by_name["flowers"]["num_classes"] == 102  # Flowers-102's known definition


def test_light_commands_do_not_import_torch(home: Path) -> None:
    """Help and catalog listings stay fast: torch/timm are imported only where needed."""
    code = (
        "import sys, json\n"
        "from manager.cli import main\n"
        "for args in (['--help'], ['task', 'list', '--json'], ['budget', 'show', '--json'],"
        " ['storage', '--json'], ['history', '--json'], ['task', '--help']):\n"
        "    main(args, standalone_mode=False)\n"
        "print(json.dumps(sorted(m for m in ('torch', 'timm') if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**CLI(home).env()},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
