"""``mgr history --at TIME``: what was live then, and each task's champion then."""

from __future__ import annotations

import click

from manager.cli.app import App, echo_json


def show_at(app: App, when: str, all_hosts: bool, as_json: bool) -> None:
    """Print what this home (or every host) served at ``when``, and the champions then."""
    from manager.catalog.timeline import champions_at, live_at, parse_when
    from manager.catalog.views import iso

    at = parse_when(when)
    host = None if all_hosts else app.home.host
    with app.session(write=False) as s:
        live = live_at(s, at, host)
        champions = champions_at(s, at)
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
