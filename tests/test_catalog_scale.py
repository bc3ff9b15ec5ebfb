"""A catalog that scales: reports run the same number of queries for 5 tasks as for 50, pages
are slices of the whole, and the CLI's --limit/--offset/--task page every listing the same way."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import TINY_SPEC, InProcessCLI, assert_clean_error
from sqlalchemy import event

from manager.catalog import Catalog, accounting, budgets, open_catalog, tasks, versions
from manager.catalog.models import VERSION_DELETED
from manager.catalog.paging import Page
from manager.catalog.views import task_dict, task_rows
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store


def _catalog(home: Path) -> Catalog:
    return open_catalog(Home(home), url=f"sqlite:///{home / 'catalog.db'}")


def _add_tasks(cat: Catalog, names: list[str]) -> None:
    """Tasks of 3 versions each (v1 deleted on every other task, v3 active, the first one's v3
    on disk), a budget on every third task, and a global budget."""
    store = Store.of(cat.home)
    with cat.session() as s:
        for i, name in enumerate(names):
            t = tasks.add_task(
                s, name=name, dataset="synthetic", class_names=["a", "b", "c"],
                backbone_spec=TINY_SPEC, budget_bytes=50_000 if i % 3 == 0 else None,
            )  # fmt: skip
            for n in (1, 2, 3):
                path = store.artifact(name, n)
                if i == 0 and n == 3:
                    store.write_bytes(path, b"\0" * 3_000)
                v = versions.add_version(
                    s, t, method="consolidator", structure=[[96, False]], bytes=1_000 * n + i,
                    content_hash=f"{i:060d}{n:04d}", path=store.rel(path),
                )  # fmt: skip
                if n == 1 and i % 2:
                    v.status = VERSION_DELETED
            versions.promote(s, t, v)
        budgets.set_budget(s, 10_000_000)


@contextmanager
def _counting(cat: Catalog) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(cat.engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(cat.engine, "before_cursor_execute", count)


def _queries(cat: Catalog, fn: Callable[[Any], Any]) -> tuple[Any, int]:
    """`fn(session)`'s result and how many SQL statements its read transaction ran."""
    with _counting(cat) as seen, cat.session(write=False) as s:
        result = fn(s)
    return result, len(seen)


REPORTS: dict[str, Callable[[Any, Home], Any]] = {
    "storage": lambda s, h: accounting.storage_report(s, h),
    "storage page": lambda s, h: accounting.storage_report(s, h, Page("t*", limit=2, offset=1)),
    "budgets": lambda s, h: budgets.budget_report(s),
    "budgets page": lambda s, h: budgets.budget_report(s, Page(limit=3)),
    "task list": lambda s, h: task_rows(s),
    "task count": lambda s, h: tasks.count_tasks(s, "t*"),
    "headroom": lambda s, h: budgets.headroom(s, tasks.get_task(s, "t000")),
    "check_fits": lambda s, h: budgets.check_fits(s, tasks.get_task(s, "t000"), 1),
}


def test_reports_run_as_many_queries_for_50_tasks_as_for_5(home: Path) -> None:
    cat = _catalog(home)
    try:
        _add_tasks(cat, [f"t{i:03d}" for i in range(5)])
        few = {k: _queries(cat, lambda s, f=f: f(s, cat.home)) for k, f in REPORTS.items()}
        _add_tasks(cat, [f"t{i:03d}" for i in range(5, 50)])
        many = {k: _queries(cat, lambda s, f=f: f(s, cat.home)) for k, f in REPORTS.items()}
    finally:
        cat.close()
    assert {k: n for k, (_, n) in many.items()} == {k: n for k, (_, n) in few.items()}
    assert all(n <= 6 for _, n in many.values()), {k: n for k, (_, n) in many.items()}
    # The counts are of reports that did grow.
    assert len(few["storage"][0].tasks) == 5 and len(many["storage"][0].tasks) == 50
    assert len(many["task list"][0]) == 50 and many["task count"][0] == 50
    assert [t.task for t in many["storage page"][0].tasks] == ["t001", "t002"]


def test_aggregates_match_the_rows_one_by_one(home: Path) -> None:
    """What the database sums is what walking every task's rows gives."""
    cat = _catalog(home)
    try:
        _add_tasks(cat, [f"t{i:03d}" for i in range(7)])
        with cat.session(write=False) as s:
            all_tasks = tasks.list_tasks(s)
            assert task_rows(s) == [task_dict(s, t) for t in all_tasks]
            report = accounting.storage_report(s, cat.home)
            for t, row in zip(all_tasks, report.tasks, strict=True):
                live = [v for v in t.versions if v.status != VERSION_DELETED]
                assert row.task == t.name and row.active_version == t.active_version.number
                assert row.used_bytes == sum(v.bytes for v in live) == budgets.used_bytes(s, t)
                assert row.budget_bytes == budgets.get_budget(s, t)
                assert [v.number for v in row.versions] == [v.number for v in t.versions]
                assert [v.active for v in row.versions] == [False, False, True]
            first = report.tasks[0].versions
            assert first[2].on_disk_bytes == 3_000 and not first[2].missing
            assert first[0].missing and first[0].on_disk_bytes is None
            tot = report.totals
            assert (tot.tasks, tot.versions) == (7, 7 * 3 - 3)
            assert (
                tot.adapter_bytes
                == budgets.used_bytes(s)
                == sum(r.used_bytes for r in report.tasks)
            )
            assert tot.global_budget_bytes == 10_000_000
            assert tot.full_finetune_bytes == sum(r.full_finetune_bytes for r in report.tasks)
            assert tot.backbone_bytes == report.tasks[0].backbone_bytes  # one shared spec
            budget = budgets.budget_report(s)
            assert [(b.task, b.max_bytes, b.used_bytes) for b in budget.tasks] == [
                (r.task, r.budget_bytes, r.used_bytes) for r in report.tasks
            ]
            # A page is a slice of the whole; the totals stay the whole catalog's.
            page = accounting.storage_report(s, cat.home, Page(limit=3, offset=2))
            assert page.tasks == report.tasks[2:5] and page.totals == report.totals
            assert budgets.budget_report(s, Page(limit=3, offset=2)).tasks == budget.tasks[2:5]
            assert task_rows(s, Page(offset=5)) == task_rows(s)[5:]
    finally:
        cat.close()


def test_name_patterns_are_globs_with_likes_wildcards_escaped(home: Path) -> None:
    cat = _catalog(home)
    try:
        with cat.session() as s:
            for name in ("a_b", "axb", "a-b", "p1", "p2", "p10", "q"):
                tasks.add_task(s, name=name, dataset="synthetic", class_names=["x"])
        with cat.session(write=False) as s:

            def names(pattern: str) -> list[str]:
                return [r["name"] for r in task_rows(s, Page(pattern))]

            assert names("a_b") == ["a_b"]  # '_' is a name character, not LIKE's wildcard
            assert names("a?b") == ["a-b", "a_b", "axb"]
            assert names("p*") == ["p1", "p10", "p2"] == names("P*")
            assert names("p?") == ["p1", "p2"] and names("*1*") == ["p1", "p10"]
            assert names("nothing*") == [] and tasks.count_tasks(s, "p*") == 3
            for bad in ("p%", "p\\", "[ab]", "", "p 1"):
                with pytest.raises(MgrError, match="bad task pattern"):
                    task_rows(s, Page(bad))
    finally:
        cat.close()


def test_cli_pages_filters_and_footers(cli: InProcessCLI, home: Path) -> None:
    cat = _catalog(home)
    try:
        _add_tasks(cat, ["p1", "p2", "p3", "p4", "q1"])
    finally:
        cat.close()
    page = ["--limit", "2", "--offset", "1", "--task", "p*", "--json"]
    assert [r["name"] for r in cli.json("task", "list", *page[:-1])] == ["p2", "p3"]
    report = cli.json("storage", *page[:-1])
    assert [t["task"] for t in report["tasks"]] == ["p2", "p3"]
    assert report["totals"]["tasks"] == 5 and report["totals"]["versions"] == 5 * 3 - 2
    budget = cli.json("budget", "show", *page[:-1])
    assert [t["task"] for t in budget["tasks"]] == ["p2", "p3"]
    assert budget["global"]["max_bytes"] == 10_000_000
    # --json prints every row unless --limit says otherwise; --limit 0 is all, in text too.
    assert len(cli.json("task", "list")) == 5
    assert len(cli.json("task", "list", "--limit", "0")) == 5

    text = cli("task", "list", "--limit", "2", "--task", "p*").stdout
    assert "p1" in text and "p2" in text and "p3" not in text
    assert "2 more tasks of 4: --offset 2 for the next page" in text
    assert "more tasks" not in cli("task", "list", "--limit", "0").stdout
    text = cli("storage", "--limit", "1", "--offset", "3").stdout
    assert "p4" in text and "p3" not in text and "1 more tasks of 5: --offset 4" in text
    assert "15 version(s)" not in text and "13 version(s) of 5 task(s)" in text  # totals: all
    text = cli("budget", "show", "--task", "q*").stdout
    assert "task q1" in text and "task p1" not in text and "global" in text
    assert "no task matches 'z*'" in cli("task", "list", "--task", "z*").stdout

    events = cli.json("history")
    newest = cli.json("history", "--limit", "3")
    before = cli.json("history", "--limit", "3", "--offset", "3")
    assert newest == events[-3:] and before == events[-6:-3]
    text = cli("history", "--limit", "3").stdout
    assert "earlier events: --offset 3 for the page before" in text.splitlines()[0]
    assert "earlier" not in cli("history", "--limit", str(len(events))).stdout

    for args in (("task", "list", "--task", "p%"), ("storage", "--limit", "-1")):
        assert_clean_error(cli(*args, ok=False))
