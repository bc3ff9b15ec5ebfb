"""``mgr switch TASK[@VERSION]``: hot-swap a task's delta onto the live backbone file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import VersionRefType
from manager.errors import MgrError

if TYPE_CHECKING:
    from manager.switch.live import SwitchReport


@click.command("switch")
@click.argument("target", required=False, type=VersionRefType(), metavar="TASK[@VERSION|@ALIAS]")
@click.option(
    "--none", "to_none", is_flag=True, help="Serve the backbone alone (no task live) everywhere."
)
@click.option(
    "--backbone",
    metavar="SPEC|HASH",
    help="With --none: only this live backbone (its spec, or a prefix of its weights hash).",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Rebuild the live files from W0 (alone: every live backbone, for what is live now).",
)
@json_option
@pass_app
def command(
    app: App, target: str | None, to_none: bool, backbone: str | None, repair: bool, as_json: bool
) -> None:
    """Make TASK's adapter live in <home>/live/<hash>/ (default: its champion).

    Each bound backbone has its own live files (live/<first 16 hex of its weights hash>/); a
    TASK whose backbone has none yet loads it first (a copy of W0, O(backbone)). The artifact
    is checked first (bytes, sha256, backbone); then only the supports of the old and the new
    delta are rewritten in place in that backbone's backbone.safetensors, by exact writes
    (W[supp] = W0[supp] + dW, never a subtraction), and the task's head goes to its
    head.safetensors. A switch killed half-way is finished or rolled back by the next mgr
    command. Tasks on other backbones stay live ('mgr status' lists them all).

    \b
    Examples:
      mgr switch pets          # pets' champion
      mgr switch pets@2        # a given version
      mgr switch pets@candidate   # the version an alias points at ('mgr alias list pets')
      mgr switch --none        # every live backbone alone
      mgr switch --none --backbone deit_tiny_patch16_224   # one of them
      mgr switch --repair      # rebuild every live backbone (e.g. after 'mgr status' says NO)
    """
    from manager.catalog.refs import version_number
    from manager.names import parse_version_selector

    if target is not None and to_none:
        raise MgrError("name one TASK[@VERSION], or --none for the backbone alone, not both")
    if target is None and not to_none and not repair:
        raise MgrError("name one TASK[@VERSION], or --none for the backbone alone")
    if backbone is not None and not to_none:
        raise MgrError("--backbone goes with --none (a TASK names its own backbone)")
    task, selector = parse_version_selector(target) if target is not None else (None, None)
    number = None
    if task is not None and selector is not None:  # an alias names a number now
        with app.session(write=False) as s:
            number = version_number(s, task, selector)
    from manager.switch.live import repair_all, switch_live, switch_none

    if task is None:
        if to_none:
            reports = switch_none(app.home, app.catalog, backbone)
            if repair:  # the backbone alone, rebuilt from W0
                reports = repair_all(app.home, app.catalog)
        else:
            reports = repair_all(app.home, app.catalog)
        if as_json:
            echo_json([r.to_dict() for r in reports])
            return
        if not reports:
            click.echo("no backbone is live: nothing to do")
        for r in reports:
            click.echo(describe(r))
        return
    report = switch_live(app.home, app.catalog, task, number, repair=repair)
    if as_json:
        echo_json(report.to_dict())
        return
    click.echo(describe(report))


def label(task: str | None, version: int | None) -> str:
    return f"{task}@{version}" if task is not None else "the backbone alone"


def describe(report: SwitchReport) -> str:
    """One line (plus notes) saying what a `SwitchReport` did."""
    now = label(report.task, report.version)
    if not report.changed:
        return f"{now} is already live"
    was = label(report.previous_task, report.previous_version)
    if report.full_restore:
        how = "the live file reset from W0, then the new delta applied"
    else:
        how = "old restored + new applied"
    if report.loaded:
        how = f"backbone {report.backbone} loaded: a fresh copy of W0, then the delta applied"
    what = f"rebuilt {now}" if was == now else f"switched to {now} (was {was})"
    where = f" on {report.backbone}" if report.backbone else ""
    line = (
        f"{what}{where} in {report.seconds * 1000:.1f} ms: wrote "
        f"{report.values_written:,} weight values ({how}) of the backbone's "
        f"{report.values_total:,}"
    )
    return "\n".join([line, *(f"  note: {n}" for n in report.notes)])
