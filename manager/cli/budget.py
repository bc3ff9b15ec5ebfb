"""``mgr budget``: set and show storage budgets."""

from __future__ import annotations

import click

from manager.catalog import budgets
from manager.catalog import tasks as task_ops
from manager.cli.app import App, console, json_option, pass_app
from manager.cli.jsonout import echo_json_stream
from manager.cli.paging import footer, make_page, page_options
from manager.cli.types import Size
from manager.units import format_size, parse_optional_size


@click.group("budget")
def command() -> None:
    """Storage budgets for adapter versions (per task and global)."""


@command.command("set")
@click.argument("size", type=Size(allow_none=True))
@click.option("--task", "task_name", help="The task's budget (default: the global budget).")
@pass_app
def set_(app: App, size: str, task_name: str | None) -> None:
    """Set a budget to SIZE (e.g. 300KB, 1.5MiB); 'none' removes it."""
    max_bytes = parse_optional_size(size)
    with app.session() as s:
        task = task_ops.get_task(s, task_name) if task_name is not None else None
        budgets.set_budget(s, max_bytes, task)
        used = budgets.used_bytes(s, task)
    what = f"task {task_name!r}" if task_name else "global"
    if max_bytes is None:
        click.echo(f"{what} budget removed")
        return
    over = " (already over: garbage-collect old versions)" if used > max_bytes else ""
    click.echo(f"{what} budget set to {format_size(max_bytes)}, used {format_size(used)}{over}")


@command.command("show")
@page_options("tasks")
@json_option
@pass_app
def show(app: App, pattern: str | None, limit: int | None, offset: int, as_json: bool) -> None:
    """Show the global budget and a page of the per-task ones (--limit, --offset, --task).

    \b
    mgr budget show --task 'pets*'     the global budget and the pets tasks'
    """
    page = make_page(pattern, limit, offset, as_json)
    if as_json:  # streamed: each task written as its row arrives
        with app.session(write=False) as s:
            echo_json_stream(
                {
                    "global": budgets.global_usage(s).to_dict(),
                    "tasks": budgets.iter_task_budgets(s, page),
                }
            )
        return
    with app.session(write=False) as s:
        report = budgets.budget_report(s, page)
        total = task_ops.count_tasks(s, pattern)
    from rich.table import Table

    table = Table("scope", "budget", "used", "used %")
    rows = [("global", report.global_budget)] + [(f"task {t.task}", t) for t in report.tasks]
    for scope, row in rows:
        pct = f"{row.used_pct:.1f}%" if row.used_pct is not None else "-"
        max_text = format_size(row.max_bytes) if row.max_bytes is not None else "none"
        table.add_row(scope, max_text, format_size(row.used_bytes), pct)
    console().print(table)
    more = footer(page, len(report.tasks), total or 0, "tasks")
    if more:
        click.echo(more)
