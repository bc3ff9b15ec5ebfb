"""``mgr alias`` (named pointers to versions) and ``mgr tag`` (free labels on versions)."""

from __future__ import annotations

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import VersionRefType
from manager.errors import MgrError


@click.group("alias")
def alias() -> None:
    """Named pointers to a task's versions, usable wherever a version is: TASK@NAME.

    Every task has 'champion': its active version, the one 'mgr switch TASK' and the server
    use; move it with 'mgr promote'. Other names (candidate, stable, ...) are yours.

    \b
    Examples:
      mgr alias set pets candidate 3
      mgr switch pets@candidate
      mgr alias list pets --json
    """


@alias.command("set")
@click.argument("task")
@click.argument("name")
@click.argument("version", metavar="VERSION")
@json_option
@pass_app
def alias_set(app: App, task: str, name: str, version: str, as_json: bool) -> None:
    """Point alias NAME of TASK at VERSION (a number, or another alias); created if new."""
    from manager.catalog import aliases, tasks
    from manager.catalog.refs import select_version
    from manager.names import parse_selector, validate_alias_name

    validate_alias_name(name)
    selector = parse_selector(version, task)
    with app.session() as s:
        t = tasks.get_task(s, task)
        v = select_version(s, t, selector)
        previous = aliases.set_alias(s, t, name, v)
        number = v.number
    if as_json:
        echo_json({"task": task, "alias": name, "version": number, "previous": previous})
        return
    was = f" (was v{previous})" if previous is not None else ""
    click.echo(f"{task}@{name} -> v{number}{was}")


@alias.command("remove")
@click.argument("task")
@click.argument("name")
@pass_app
def alias_remove(app: App, task: str, name: str) -> None:
    """Remove alias NAME of TASK (the version stays; 'champion' cannot be removed)."""
    from manager.catalog import aliases, tasks

    with app.session() as s:
        number = aliases.remove_alias(s, tasks.get_task(s, task), name)
    click.echo(f"removed {task}@{name} (it pointed at v{number})")


@alias.command("list")
@click.argument("task", required=False)
@json_option
@pass_app
def alias_list(app: App, task: str | None, as_json: bool) -> None:
    """Every alias of TASK (default: of every task), champion first."""
    from manager.catalog import aliases, tasks

    with app.session(write=False) as s:
        chosen = [tasks.get_task(s, task)] if task is not None else tasks.list_tasks(s)
        rows = [
            {
                "task": t.name,
                "alias": name,
                "version": v.number if v is not None else None,
                "status": v.status if v is not None else None,
            }
            for t in chosen
            for name, v in aliases.list_aliases(s, t)
        ]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no tasks yet")
        return
    for r in rows:
        where = f"v{r['version']}" if r["version"] is not None else "-"
        state = f"  ({r['status']})" if r["status"] not in (None, "ready") else ""
        click.echo(f"{r['task'] + '@' + r['alias']:<40} {where}{state}")


@click.command("tag")
@click.argument("target", type=VersionRefType(), metavar="TASK@VERSION")
@click.argument("names", nargs=-1)
@click.option("--remove", is_flag=True, help="Remove these tags instead of adding them.")
@json_option
@pass_app
def tag(app: App, target: str, names: tuple[str, ...], remove: bool, as_json: bool) -> None:
    """Add (or --remove) tags on a version; with no NAMES, show its tags.

    Tags are free labels ('reviewed', 'prod-2026-11'); 'mgr versions TASK' shows them.

    \b
    Examples:
      mgr tag pets@3 reviewed baseline
      mgr tag pets@candidate reviewed --remove
      mgr tag pets@3 --json
    """
    from manager.catalog import aliases, tasks
    from manager.catalog.refs import select_version
    from manager.names import parse_version_selector

    name, selector = parse_version_selector(target)
    if remove and not names:
        raise MgrError("name the tags to remove: mgr tag TASK@VERSION NAME... --remove")
    with app.session(write=bool(names)) as s:
        t = tasks.get_task(s, name)
        v = select_version(s, t, selector)
        if names:
            (aliases.untag if remove else aliases.tag)(s, t, v, names)
        out = {"task": name, "version": v.number, "tags": aliases.tags_of(s, v)}
    if as_json:
        echo_json(out)
        return
    click.echo(f"{name}@{out['version']}: {', '.join(out['tags']) or 'no tags'}")
