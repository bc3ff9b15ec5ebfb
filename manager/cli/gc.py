"""``mgr gc``: delete old adapter versions by a retention policy."""

from __future__ import annotations

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import Int64
from manager.units import format_size


@click.command("gc")
@click.option(
    "--keep", type=Int64(0), default=3, show_default=True, help="Newest versions per task."
)
@click.option("--task", help="Only this task's versions.")
@click.option("--dry-run", is_flag=True, help="Say what would be deleted; delete nothing.")
@json_option
@pass_app
def command(app: App, keep: int, task: str | None, dry_run: bool, as_json: bool) -> None:
    """Delete all but the newest --keep versions of each task, and files nothing owns.

    A task's active version and the live (or pending) version are always kept. Rows are marked
    deleted (history is kept) and their artifact files removed. Files under artifacts/,
    backbones/, runs/ and live/ that no catalog row or running process owns (a removed task's
    files, a killed writer's temporary file) are removed too. A home that belongs to another
    catalog (see <home>/catalog-id; a wrong MGR_DB_URL) is refused before anything is deleted;
    --dry-run lists what would go and says whether gc would refuse.
    """
    from manager.registry.maintenance import collect_garbage

    rep = collect_garbage(app.home, app.catalog, keep=keep, task=task, dry_run=dry_run)
    if as_json:
        echo_json(rep.to_dict())
    else:
        verb = "would delete" if dry_run else "deleted"
        for d in rep.deleted:
            click.echo(f"{verb} {d.task}@{d.version} ({format_size(d.bytes)})")
        for f in rep.leftovers:
            gone = "would remove" if dry_run else "removed"
            click.echo(f"{gone} leftover file {f.path} ({f.reason}, {format_size(f.bytes)})")
        click.echo(
            f"{verb} {len(rep.deleted)} version(s), {format_size(rep.freed_bytes)}; "
            f"kept {len(rep.kept)}"
            + (f"; {len(rep.leftovers)} leftover file(s)" if rep.leftovers else "")
        )
    if rep.refused:
        click.echo(f"warning: {rep.refused}", err=True)
    for failure in rep.failed:
        click.echo(f"warning: could not remove {failure}", err=True)
