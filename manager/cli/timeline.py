"""``mgr history --at TIME``: what was live then, and each task's champion then."""

from __future__ import annotations

import click

from manager.cli.app import App, echo_json
from manager.errors import MgrError
from manager.names import validate_task_name


def show_at(
    app: App,
    when: str | None,
    all_hosts: bool,
    task: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Print what this home (or every host) served at ``when``, and the champions then
    (``task``: that task's only)."""
    from manager.catalog.timeline import champions_at, live_at, parse_when
    from manager.catalog.views import iso

    if when is None:
        raise MgrError("--all-hosts goes with --at TIME (e.g. mgr history --at 2h --all-hosts)")
    if limit is not None:
        raise MgrError("--limit lists events; --at shows one moment: use one or the other")
    if task is not None:
        validate_task_name(task)
    at = parse_when(when)
    host = None if all_hosts else app.home.host
    with app.session(write=False) as s:
        live = live_at(s, at, host)
        champions = [c for c in champions_at(s, at) if task is None or c.task == task]
    if as_json:
        echo_json(
            {
                "at": iso(at),
                "host": host,
                "live": [x.to_dict() for x in live],
                "champions": [c.to_dict() for c in champions],
            }
        )
        return
    click.echo(f"at {iso(at)}")
    for x in live:
        what = x.version or "the backbone alone"
        since = f" (since {iso(x.since)})" if x.since is not None else " (never switched)"
        click.echo(f"  live on {x.host or 'an unnamed host'}: {what}{since}")
    if not champions:
        click.echo("  no tasks then")
    for c in champions:
        champ = f"v{c.version} (since {iso(c.since)})" if c.version is not None else "none yet"
        click.echo(f"  {c.task}: champion {champ}")
