"""``mgr history``: the append-only event log."""

from __future__ import annotations

import json

import click

from manager.catalog.events import list_events
from manager.catalog.views import event_dict
from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.paging import DEFAULT_PAGE
from manager.cli.types import MAX_INT64, Int64
from manager.names import validate_task_name


@click.command("history")
@click.option("--task", "task_name", help="Only events of this task (removed tasks too).")
@click.option(
    "--limit",
    type=Int64(0),
    help=f"Only the newest N events; 0: all. [default: {DEFAULT_PAGE} in text, all with --json]",
)
@click.option(
    "--offset", type=Int64(0), default=0, help="Skip the newest N events first (older pages)."
)
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
    app: App, task_name: str | None, limit: int | None, offset: int, at: str | None,
    all_hosts: bool, as_json: bool,
) -> None:  # fmt: skip
    """Show what happened: tasks added and removed, versions, promotions, switches, budgets.

    Oldest first; the text shows the newest 100 events, --offset pages back in time.

    \b
    mgr history --task pets --limit 20   pets' last 20 events
    mgr history --limit 20 --offset 20   the 20 before the newest 20
    mgr history --at 2h                  what was live two hours ago
    """
    if at is not None or all_hosts:
        from manager.cli.timeline import show_at

        return show_at(app, at, all_hosts, task_name, limit, as_json)
    if task_name is not None:
        validate_task_name(task_name)
    if limit is None and not as_json:
        limit = DEFAULT_PAGE
    limit = limit or None
    with app.session(write=False) as s:
        # One row past the page says whether older events exist, without counting the log.
        probe = None if limit is None else min(limit + 1, MAX_INT64)
        rows = [event_dict(e) for e in list_events(s, task_name, probe, offset)]
    earlier = limit is not None and len(rows) > limit
    if earlier:
        rows = rows[1:]  # oldest first: the probe row is the first
    if as_json:
        echo_json(rows)
        return
    if earlier:
        click.echo(
            f"... earlier events: --offset {offset + len(rows)} for the page before, "
            "--limit 0 for all"
        )
    for r in rows:
        details = json.dumps(r["details"], sort_keys=True) if r["details"] else ""
        click.echo(f"{r['at']}  {r['kind']:<16} {r['task'] or '-':<20} {details}")
