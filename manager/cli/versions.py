"""``mgr versions TASK``: a task's adapter versions with their metrics and bytes."""

from __future__ import annotations

import click

from manager.catalog import tasks as task_ops
from manager.catalog.models import VERSION_DELETED
from manager.catalog.views import version_dict
from manager.cli.app import App, console, echo_json, json_option, pass_app
from manager.units import format_size


def _structure(v: dict) -> str:
    if v["method"] == "consolidator" and v["structure"]:
        return "g=" + ",".join(f"{g}{'s' if s else ''}" for g, s in v["structure"])
    if v["method"] == "lora":
        return f"r={v['hyperparams'].get('lora_rank', '?')}"
    return "-"


def _pct(value: float | None) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


@click.command("versions")
@click.argument("task")
@json_option
@pass_app
def command(app: App, task: str, as_json: bool) -> None:
    """List TASK's adapter versions: method, structure, accuracy, bytes on disk."""
    with app.session(write=False) as s:
        t = task_ops.get_task(s, task)
        active = t.active_version.number if t.active_version else None
        rows = [{**version_dict(v), "active": v.number == active} for v in t.versions]
        # Aliases (champion = active) and tags of each version.
        from manager.catalog.aliases import aliases_by_version, tags_by_version

        named, tagged = aliases_by_version(s, t), tags_by_version(s, t)
        for v, row in zip(t.versions, rows, strict=True):
            row.update(aliases=named.get(v.id, []), tags=tagged.get(v.id, []))
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"{task}: no versions yet (train one with 'mgr train {task}')")
        return
    from rich.table import Table

    table = Table(
        "version",
        "method",
        "structure",
        "top-1 %",
        "top-5 %",
        "bytes",
        "status",
        "aliases",
        "tags",
        "created",
        title=f"{task}: adapter versions (* = active, the champion)",
    )
    for v in rows:
        m = v["metrics"] or {}
        size = format_size(v["bytes"]) if v["status"] != VERSION_DELETED else "-"
        table.add_row(
            f"v{v['number']}{' *' if v['active'] else ''}",
            v["method"],
            _structure(v),
            _pct(m.get("top1")),
            _pct(m.get("top5")),
            size,
            v["status"],
            ",".join(v["aliases"]) or "-",
            ",".join(v["tags"]) or "-",
            (v["created_at"] or "")[:19],
        )
    console().print(table)
