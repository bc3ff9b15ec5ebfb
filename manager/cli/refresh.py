"""``mgr task refresh TASK``: a task whose data gained (or lost) classes.

The task's label set only grows by appending: a class keeps its index for as long as it is in
the set, so every version trained before keeps meaning what it meant. A class gone from the
data stays in the set (its head row is still trained against) unless ``--drop`` removes it;
dropping renumbers the classes after it, which only matters to versions trained later (each
version serves its own recorded class names, and warm starts match head rows by name).
"""

from __future__ import annotations

import click

from manager.catalog import events
from manager.catalog import tasks as task_ops
from manager.cli.app import App, echo_json, json_option, pass_app
from manager.errors import MgrError

CLASSES_REFRESHED = "classes_refreshed"


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:10])
    return shown + (f", ... ({len(names)} in all)" if len(names) > 10 else "")


@click.command("refresh")
@click.argument("task")
@click.option("--yes", is_flag=True, help="Record the new classes (appended: old indices stay).")
@click.option(
    "--drop",
    is_flag=True,
    help="With --yes, also remove classes no longer in the data (the classes after them are "
    "renumbered for versions trained from now on).",
)
@json_option
@pass_app
def refresh(app: App, task: str, yes: bool, drop: bool, as_json: bool) -> None:
    """Compare TASK's label set with the classes its data has now; --yes records new ones.

    \b
    Examples:
      mgr task refresh pets               # what changed, nothing written
      mgr task refresh pets --yes         # append the new classes to the label set
      mgr task refresh pets --yes --drop  # and remove the classes gone from the data
    Then 'mgr train pets --init champion' grows the head, keeping the old classes' rows.
    """
    if drop and not yes:
        raise MgrError("--drop changes the label set; pass it with --yes")
    with app.session(write=False) as s:
        t = task_ops.get_task(s, task)
        dataset, root, before = t.dataset, t.data_root, list(t.class_names)
    from manager.datasets import describe

    now, _ = describe(dataset, root)
    new = [c for c in now if c not in before]
    missing = [c for c in before if c not in now]
    after = before + new if yes else before
    if yes and drop:
        after = [c for c in after if c not in missing]
    recorded = yes and after != before
    if recorded:
        with app.session() as s:
            t = task_ops.get_task(s, task)
            if list(t.class_names) != before:
                raise MgrError(f"task {task!r}'s label set changed meanwhile; run refresh again")
            t.class_names = list(after)  # a new list: the JSON column sees the change
            t.num_classes = len(after)
            events.record_event(
                s,
                CLASSES_REFRESHED,
                task_name=task,
                added=new,
                dropped=missing if drop else [],
                num_classes=len(after),
            )
    if as_json:
        echo_json(
            {
                "task": task,
                "new": new,
                "missing": missing,
                "recorded": recorded,
                "dropped": missing if (recorded and drop) else [],
                "classes": after,
            }
        )
        return
    if not new and not missing:
        click.echo(f"{task}: the data has the task's {len(before)} classes; nothing to refresh")
        return
    if new:
        verb = "recorded" if yes else "found"
        click.echo(f"{task}: {len(new)} new class(es) {verb}: {_listed(new)}")
    if missing:
        fate = "dropped" if yes and drop else "kept in the label set (--yes --drop removes them)"
        click.echo(
            f"{task}: {len(missing)} class(es) no longer in the data, {fate}: {_listed(missing)}"
        )
    if not yes and new:
        click.echo(f"  record them with 'mgr task refresh {task} --yes'")
    elif recorded:
        click.echo(
            f"  {len(after)} classes now; train the next version with "
            f"'mgr train {task} --init champion' to keep what the old classes learnt"
        )
