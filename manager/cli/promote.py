"""``mgr promote TASK@VERSION`` and ``mgr rollback TASK``: move the champion (or another alias)."""

from __future__ import annotations

from typing import Any

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import VersionRefType
from manager.errors import MgrError
from manager.names import CHAMPION


@click.command("promote")
@click.argument("target", type=VersionRefType(), metavar="TASK@VERSION")
@click.option(
    "--alias",
    "alias",
    default=CHAMPION,
    show_default=True,
    help="The alias to move; 'champion' is the task's active version, the one served.",
)
@json_option
@pass_app
def promote(app: App, target: str, alias: str, as_json: bool) -> None:
    """Point TASK's champion (or --alias NAME) at VERSION, a number or another alias.

    No gate: a manual promotion is taken as asked, and recorded in 'mgr history' as one.
    'mgr rollback TASK' undoes it.

    \b
    Examples:
      mgr promote pets@3                    # v3 becomes the champion (the active version)
      mgr promote pets@candidate            # whatever 'candidate' points at becomes champion
      mgr promote pets@4 --alias candidate  # move (or create) the alias 'candidate'
    """
    from manager.catalog import aliases, tasks
    from manager.catalog.refs import select_version
    from manager.names import parse_version_selector, validate_alias_name

    name, selector = parse_version_selector(target)
    if selector is None:
        raise MgrError(f"name the version to promote: {name}@VERSION (a number or an alias)")
    validate_alias_name(alias, settable=False)
    with app.session() as s:
        task = tasks.get_task(s, name)
        version = select_version(s, task, selector)
        previous = aliases.promote(s, task, version, alias)
        number = version.number
    out = {"task": name, "alias": alias, "version": number, "previous": previous}
    if as_json:
        echo_json(out)
        return
    was = f"v{previous}" if previous is not None else "none"
    if previous == number:
        click.echo(f"{name}@{alias} is v{number} already")
    else:
        click.echo(f"{name}@{alias} -> v{number} (was {was})")


@click.command("rollback")
@click.argument("task")
@click.option("--alias", default=CHAMPION, show_default=True, help="The alias to roll back.")
@json_option
@pass_app
def rollback(app: App, task: str, alias: str, as_json: bool) -> None:
    """Point TASK's champion (or --alias NAME) back at its previous version.

    The history of promotions is a stack: each promotion pushes a version, each rollback pops
    back to the one before (versions deleted since are skipped), so rolling back twice goes two
    promotions back. It does not switch the live files: run 'mgr switch TASK' for that.
    """
    from manager.catalog import aliases, tasks

    with app.session() as s:
        t = tasks.get_task(s, task)
        was, now, skipped = aliases.rollback(s, t, alias)
        out = {
            "task": task,
            "alias": alias,
            "version": now.number,
            "previous": was.number if was is not None else None,
            "skipped_deleted": skipped,
        }
    if as_json:
        echo_json(out)
        return
    gone = f"; skipped deleted {', '.join(f'v{n}' for n in skipped)}" if skipped else ""
    click.echo(f"{task}@{alias} rolled back to v{out['version']} (was v{out['previous']}){gone}")


def describe_promotion(number: int, p: dict[str, Any]) -> str:
    """One line (two where the split needs saying) on what ``mgr train`` did to the champion."""
    verdict = "promoted" if p["promoted"] else "not promoted"
    if "score" not in p:
        return f"promotion: v{number} {verdict} ({p['reason']})"
    line = (
        f"gate: v{number} {p['score']:.1f}% vs champion v{p['champion_version']} "
        f"{p['champion_score']:.1f}% on {p['split']} (margin {p['margin']:.1f}): {verdict}"
    )
    if not p["reason"].startswith("new "):  # decided on something else than the scores
        line += f" ({p['reason']})"
    if p["split"] != "val":
        line += f"\n  compared on {p['split']}: {p['split_note']}"
    return line
