"""``mgr verify``: every file on record against the catalog; exits 1 if anything is wrong."""

from __future__ import annotations

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.units import format_size


@click.command("verify")
@json_option
@pass_app
def command(app: App, as_json: bool) -> None:
    """Check every adapter artifact (bytes, sha256, finite values), backbone file (content hash),
    the files nothing owns (see 'mgr gc'), the files under artifacts/ against the catalog's byte
    totals, and the live files (see 'mgr status')."""
    from manager.registry.maintenance import verify_all
    from manager.switch.status import live_status

    rep = verify_all(app.home, app.catalog, live_status(app.home, app.catalog, verify=True))
    if as_json:
        echo_json(rep.to_dict())
    else:
        for v in rep.versions:
            detail = f"  ({v.detail})" if v.detail else ""
            click.echo(f"{v.status.upper():<9} {v.task}@{v.version}  {v.path}{detail}")
        for b in rep.backbones:
            detail = f"  ({b.detail})" if b.detail else ""
            click.echo(f"{b.status.upper():<9} backbone {b.spec}  {b.path}{detail}")
        for f in rep.leftovers:
            click.echo(f"{'UNTRACKED':<9} {f.path}  ({f.reason}; 'mgr gc' removes it)")
        same = "==" if rep.catalog_bytes == rep.disk_bytes else "!="
        click.echo(
            f"bytes: catalog {format_size(rep.catalog_bytes)} {same} "
            f"on disk {format_size(rep.disk_bytes)}"
        )
        live = rep.live
        if not live.backbones:
            click.echo("live files: none yet")
        for b in live.backbones:
            ok = "OK" if b.verified else "WRONG"
            click.echo(f"live files: {ok}  {b.backbone['spec'] if b.backbone else '?'}")
            for p in b.problems:
                click.echo(f"  problem: {p}")
        click.echo("all OK" if rep.ok else f"{rep.problems} problem(s)")
    if not rep.ok:
        click.get_current_context().exit(1)
