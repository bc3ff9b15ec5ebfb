"""``mgr storage``: bytes per task and version, against the backbone, budgets and full copies."""

from __future__ import annotations

from pathlib import Path

import click

from manager.catalog.accounting import (
    StorageReport,
    iter_storage,
    storage_report,
    storage_totals,
)
from manager.catalog.paging import Page
from manager.catalog.tasks import count_tasks
from manager.cli.app import App, console, json_option, pass_app
from manager.cli.jsonout import echo_json_stream
from manager.cli.paging import footer, make_page, page_options
from manager.units import format_size


def _pct(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}%" if value < 1 else f"{value:.1f}%"


@click.command("storage")
@page_options("tasks")
@json_option
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.png",
    help="Also draw the report: per task, each version's bytes against its top-1, the budgets "
    "and a full fine-tune's cost (e.g. --plot storage.png).",
)
@click.option(
    "--plot-size", default="1200x800", show_default=True, metavar="WxH", help="In pixels."
)
@pass_app
def command(
    app: App,
    pattern: str | None,
    limit: int | None,
    offset: int,
    as_json: bool,
    plot: Path | None,
    plot_size: str,
) -> None:
    """Storage report: every task and version, budgets, and what full fine-tuning would cost.

    The table lists a page of tasks (--limit, --offset, --task); the totals below it, and
    "totals" in --json, always cover every task. --plot draws the same page.

    \b
    mgr storage --task 'pets*'         the pets tasks, totals of all
    mgr storage --json --limit 10      the first 10 tasks as JSON
    mgr storage --plot storage.png     the picture, beside the table
    """
    page = make_page(pattern, limit, offset, as_json)
    if as_json and plot is None:  # streamed: each task written as its rows arrive
        with app.session(write=False) as s:
            echo_json_stream(
                {
                    "tasks": iter_storage(s, app.home, page),
                    "totals": lambda: storage_totals(s, app.home).to_dict(),
                }
            )
        return
    with app.session(write=False) as s:
        report = storage_report(s, app.home, page)
        total = None if as_json or pattern is None else count_tasks(s, pattern)
    if plot is not None:  # the picture of exactly what --json prints
        from manager.report.storage_plot import parse_size, storage_png
        from manager.store.fs import Store

        png = storage_png(report.to_dict(), parse_size(plot_size))
        click.echo(f"storage plot: {Store.of(app.home).write_user_file(plot, png)}", err=as_json)
    if as_json:
        echo_json_stream(report.to_dict())
    else:
        _print(report, page, total)


def _print(report: StorageReport, page: Page, total: int | None) -> None:
    """The table of the page's tasks and versions, the footer, and the totals of all."""
    from rich.table import Table

    table = Table(
        "task / version", "bytes", "% backbone", "budget used", "full fine-tune", title="storage"
    )
    for t in report.tasks:
        budget = (
            f"{format_size(t.used_bytes)} / {format_size(t.budget_bytes)}"
            f" ({_pct(t.budget_used_pct)})"
            if t.budget_bytes is not None
            else "no budget"
        )
        table.add_row(
            f"[bold]{t.task}[/bold]",
            format_size(t.used_bytes),
            _pct(t.pct_of_backbone),
            budget,
            format_size(t.full_finetune_bytes),
        )
        for v in t.versions:
            flags = [v.method, v.status] + ["active"] * v.active + ["MISSING"] * v.missing
            table.add_row(
                f"  v{v.number} ({', '.join(flags)})",
                format_size(v.bytes),
                _pct(v.pct_of_backbone),
                "",
                "",
            )
    out = console()
    out.print(table)
    more = footer(page, len(report.tasks), report.totals.tasks if total is None else total, "tasks")
    if more:
        out.print(more, markup=False, highlight=False)
    tot = report.totals
    global_budget = (
        f"{format_size(tot.global_budget_bytes)} ({_pct(tot.global_budget_used_pct)} used)"
        if tot.global_budget_bytes is not None
        else "none"
    )
    out.print(
        f"adapters: {format_size(tot.adapter_bytes)} in {tot.versions} version(s) of "
        f"{tot.tasks} task(s); global budget: {global_budget}"
    )
    out.print(
        f"shared backbone(s) + adapters: {format_size(tot.with_adapters_bytes)}; "
        f"a full fine-tuned copy per task: {format_size(tot.full_finetune_bytes)}"
        + (f"; saved {format_size(tot.saved_bytes)}" if tot.saved_bytes else "")
    )
