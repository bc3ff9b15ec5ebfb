"""Whole-catalog ``--json`` listings stream (issue 20) and print what they printed before.

``mgr storage --json``, ``mgr task list --json`` and ``mgr budget show --json`` write each row as
the database hands it over, through `manager.cli.jsonout`: the typed reports as JSON, one row per
line (sqlite-utils' layout). The storage report's sizes on disk come
from one ``lstat`` per file now, so its confinement (a symlink out of the home is never followed)
is checked here too. Real SQLite file, real click group in process.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY_SPEC

from manager.catalog import accounting, budgets, open_catalog, tasks, versions
from manager.catalog.models import VERSION_DELETED
from manager.catalog.paging import Page
from manager.catalog.views import task_rows
from manager.cli import main
from manager.cli.jsonout import dumps, echo_json_stream
from manager.home import Home
from manager.store.fs import Store


def test_the_frame_is_laid_out_and_each_row_is_one_compact_line() -> None:
    rows = [{"task": "a", "versions": [{"n": 1, "pct": 0.5}]}, {"task": "b\nc", "x": None}]
    text = dumps({"tasks": iter(rows), "empty": [], "totals": {"rows": 2, "bytes": [1, 2]}})
    assert json.loads(text) == {"tasks": rows, "empty": [], "totals": {"rows": 2, "bytes": [1, 2]}}
    lines = text.splitlines()
    assert [json.loads(line.strip().rstrip(",")) for line in lines[2:4]] == rows
    assert lines[:2] == ["{", '  "tasks": [']
    assert '    "rows": 2,' in lines and '    "bytes": [1, 2]' not in lines  # a list: items
    with pytest.raises(TypeError):
        dumps({1: "a key that is not a string"})


def test_iterators_stream_and_callables_run_when_reached() -> None:
    calls: list[str] = []

    def rows():
        for i in range(3):
            calls.append(f"row {i}")
            yield {"n": i, "pct": i / 3}

    def totals():
        calls.append("totals")
        return {"rows": 3}

    written: list[str] = []
    echo_json_stream({"tasks": rows(), "empty": iter(()), "totals": totals}, written.append)
    want = {"tasks": [{"n": i, "pct": i / 3} for i in range(3)], "empty": [], "totals": {"rows": 3}}
    assert json.loads("".join(written)) == want and "".join(written).endswith("}\n")
    assert calls == ["row 0", "row 1", "row 2", "totals"]  # the totals after the rows

    def broken():
        raise ValueError("before the first row")
        yield  # pragma: no cover

    written.clear()
    with pytest.raises(ValueError):
        echo_json_stream({"tasks": broken()}, written.append)
    assert written == []  # nothing half-printed


@pytest.fixture
def filled(home: Path, tmp_path: Path) -> Path:
    """Six tasks x 3 versions (some deleted, some with top-1, one NaN-free odd metric), budgets,
    and on disk: a real file, a file symlinked out of the home, a task folder symlinked out of the
    home, a file symlinked to another inside it."""
    cat = open_catalog(Home(home))
    store = Store.of(Home(home))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(b"x" * 777)
    (outside / "v1.safetensors").write_bytes(b"y" * 555)
    try:
        with cat.session() as s:
            for i in range(6):
                name = f"t{i}"
                t = tasks.add_task(
                    s, name=name, dataset="synthetic", class_names=["a", "b", "c"][: 2 + i % 2],
                    backbone_spec=TINY_SPEC, budget_bytes=50_000 if i % 3 == 0 else None,
                )  # fmt: skip
                for n in (1, 2, 3):
                    metrics = [{"top1": 50.0 + n}, {}, {"top1": True, "top5": 1}][n - 1]
                    v = versions.add_version(
                        s, t, method="consolidator", structure=[[96, False]], bytes=1_000 * n + i,
                        content_hash=f"{i:060d}{n:04d}", path=store.rel(store.artifact(name, n)),
                        metrics=metrics,
                    )  # fmt: skip
                    if n == 1 and i % 2:
                        v.status = VERSION_DELETED
                versions.promote(s, t, v)
            budgets.set_budget(s, 10_000_000)
    finally:
        cat.close()
    store.write_bytes(store.artifact("t0", 3), b"\0" * 3_000)  # on disk
    store.artifact("t0", 2).symlink_to(outside / "secret.bin")  # out of the home: never read
    (store.artifacts / "t2").symlink_to(outside, target_is_directory=True)  # a folder out of it
    store.artifact("t4", 2).parent.mkdir(parents=True, exist_ok=True)
    store.artifact("t4", 2).symlink_to(store.artifact("t0", 3))  # inside: followed
    return home


def _cli(home: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k.startswith("MGR_")}
    env = {k: None for k in env} | {"MGR_HOME": str(home)}
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exit_code == 0, (args, result.output, result.exc_info)
    return result.stdout


PAGES = [[], ["--limit", "2", "--offset", "1"], ["--task", "t?"], ["--task", "none*"]]


@pytest.mark.parametrize("paging", PAGES, ids=["all", "page", "pattern", "empty"])
def test_json_listings_print_the_typed_reports(filled: Path, paging: list[str]) -> None:
    limit = int(paging[1]) if paging[:1] == ["--limit"] else None
    page = Page(
        pattern=paging[1] if paging[:1] == ["--task"] else None,
        limit=limit,
        offset=int(paging[3]) if limit else 0,
    )
    cat = open_catalog(Home(filled))
    try:
        with cat.session(write=False) as s:
            storage = accounting.storage_report(s, cat.home, page).to_dict()
            rows = task_rows(s, page)
            budget = budgets.budget_report(s, page).to_dict()
    finally:
        cat.close()
    streamed = _cli(filled, "storage", "--json", *paging)
    assert json.loads(streamed) == storage
    assert json.loads(_cli(filled, "task", "list", "--json", *paging)) == rows
    assert json.loads(_cli(filled, "budget", "show", "--json", *paging)) == budget
    # --plot takes the unstreamed path: the same text.
    plotted = _cli(filled, "storage", "--json", "--plot", str(filled.parent / "p.png"), *paging)
    assert plotted == streamed


def test_sizes_on_disk_follow_no_symlink_out_of_the_home(filled: Path) -> None:
    report = json.loads(_cli(filled, "storage", "--json"))
    by = {(t["task"], v["number"]): v for t in report["tasks"] for v in t["versions"]}
    assert by["t0", 3]["on_disk_bytes"] == 3_000 and not by["t0", 3]["missing"]
    assert by["t0", 2]["on_disk_bytes"] is None and by["t0", 2]["missing"]  # -> outside
    # t2's folder points outside, where a v1.safetensors of 555 bytes waits: not read.
    assert [by["t2", n]["on_disk_bytes"] for n in (1, 2, 3)] == [None, None, None]
    assert by["t4", 2]["on_disk_bytes"] == 3_000  # a symlink inside the home is followed
    assert by["t1", 1]["status"] == VERSION_DELETED and not by["t1", 1]["missing"]
    assert [by["t0", n]["top1"] for n in (1, 2, 3)] == [51.0, None, None]  # a bool is no top-1


def test_a_bad_pattern_prints_nothing_on_stdout(filled: Path) -> None:
    for cmd in (["storage"], ["task", "list"], ["budget", "show"]):
        result = CliRunner().invoke(
            main, [*cmd, "--json", "--task", "BAD!"], env={"MGR_HOME": str(filled)}
        )
        assert result.exit_code != 0 and result.stdout == "", (cmd, result.stdout)
        assert "bad task pattern" in result.stderr
