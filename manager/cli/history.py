"""``mgr history``: the append-only event log."""

from __future__ import annotations

import json

import click

from manager.catalog.events import list_events
from manager.catalog.views import event_dict
from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import Int64
from manager.names import validate_task_name


@click.command("history")
@click.option("--task", "task_name", help="Only events of this task (removed tasks too).")
@click.option("--limit", type=Int64(1), help="Only the newest N events.")
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="Instead: what was live on this host at TIME and each task's champion then. TIME is "
    "ISO 8601 (2026-11-25T14:30, local time without an offset) or a span ago (90m, 3d).",
)
@click.option("--all-hosts", is_flag=True, help="With --at: what every host served then.")
@json_option
@pass_app
def command(
    app: App, task_name: str | None, limit: int | None, at: str | None, all_hosts: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Show what happened: tasks added and removed, versions, promotions, switches, budgets."""
    if at is not None or all_hosts:
        from manager.cli.timeline import show_at

        return show_at(app, at, all_hosts, task_name, limit, as_json)
    if task_name is not None:
        validate_task_name(task_name)
    with app.session(write=False) as s:
        rows = [event_dict(e) for e in list_events(s, task_name, limit)]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        details = json.dumps(r["details"], sort_keys=True) if r["details"] else ""
        click.echo(f"{r['at']}  {r['kind']:<16} {r['task'] or '-':<20} {details}")
