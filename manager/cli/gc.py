"""``mgr gc``: delete old adapter versions by a retention policy."""

from __future__ import annotations

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.units import format_size


@click.command("gc")
@click.option(
    "--keep", type=click.IntRange(0), default=3, show_default=True, help="Newest versions per task."
)
@click.option("--task", help="Only this task's versions.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@json_option
@pass_app
def command(app: App, keep: int, task: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete all but the newest --keep versions of each task.

    A task's active version and the live (or pending) version are always kept. Rows are marked
    deleted (history is kept) and their artifact files removed.
    """
    from manager.switch.gc import collect_garbage

    rep = collect_garbage(app.home, app.catalog, keep=keep, task=task, dry_run=dry_run)
    if as_json:
        echo_json(rep)
        return
    verb = "would delete" if dry_run else "deleted"
    for d in rep["deleted"]:
        click.echo(f"{verb} {d['task']}@{d['version']} ({format_size(d['bytes'])})")
    for path in rep["leftover_files"]:
        click.echo(f"{'would remove' if dry_run else 'removed'} leftover file {path}")
    click.echo(
        f"{verb} {len(rep['deleted'])} version(s), {format_size(rep['freed_bytes'])}; "
        f"kept {len(rep['kept'])}"
    )
