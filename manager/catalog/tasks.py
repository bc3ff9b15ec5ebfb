"""Task rows: add, look up, list (a page at a time), remove."""

from __future__ import annotations

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from manager.catalog import budgets, events
from manager.catalog.deployment import host_deployments, live_elsewhere
from manager.catalog.models import Task
from manager.catalog.paging import Page
from manager.errors import BadInput, Conflict, NotFound
from manager.names import validate_task_name

DEFAULT_BACKBONE = "vit_base_patch16_224"


def find_task(s: Session, name: str) -> Task | None:
    """The task called `name`, or None."""
    return s.scalars(select(Task).where(Task.name == name)).one_or_none()


def get_task(s: Session, name: str) -> Task:
    """The task called `name`; MgrError if the name is bad or no such task exists."""
    validate_task_name(name)
    task = find_task(s, name)
    if task is None:
        raise NotFound(f"unknown task {name!r}", hint="see 'mgr task list'")
    return task


def count_tasks(s: Session, pattern: str | None = None) -> int:
    """How many tasks match `pattern` (all of them if None)."""
    return int(s.scalar(Page(pattern).where(select(func.count()).select_from(Task))) or 0)


def list_tasks(s: Session, page: Page | None = None) -> list[Task]:
    """The tasks of `page` (default: all), by name."""
    q = select(Task).order_by(Task.name)
    if page is not None:
        q = q.where(Task.id.in_(select(page.ids().subquery().c.id)))
    return list(s.scalars(q).all())


def add_task(
    s: Session,
    *,
    name: str,
    dataset: str,
    class_names: list[str],
    data_root: str | None = None,
    backbone_spec: str = DEFAULT_BACKBONE,
    weights: str | None = None,
    budget_bytes: int | None = None,
) -> Task:
    """Insert a task (and its budget, if given) and record ``task_added``."""
    validate_task_name(name)
    if not class_names:
        raise BadInput(f"data set {dataset!r} has no classes")
    if find_task(s, name) is not None:
        raise Conflict(f"task {name!r} already exists")
    task = Task(
        name=name,
        dataset=dataset,
        data_root=data_root,
        num_classes=len(class_names),
        class_names=list(class_names),
        backbone_spec=backbone_spec,
        weights=weights,
    )
    s.add(task)
    try:
        s.flush()
    except IntegrityError as exc:  # a concurrent add on a database without BEGIN IMMEDIATE
        raise Conflict(f"task {name!r} already exists") from exc
    events.record_event(
        s,
        events.TASK_ADDED,
        task_name=name,
        dataset=dataset,
        num_classes=task.num_classes,
        backbone=backbone_spec,
        weights=weights,
    )
    if budget_bytes is not None:
        budgets.set_budget(s, budget_bytes, task)
    return task


def is_live(s: Session, task: Task, host: str) -> bool:
    """Whether one of `host`'s backbones currently serves (or is switching to) `task`."""
    for dep in host_deployments(s, host, blank=True):
        if dep.task_id == task.id:
            return True
        pending = dep.pending_version
        if pending is not None and pending.task_id == task.id:
            return True
    return False


def remove_task(s: Session, name: str, host: str, force: bool = False) -> Task:
    """Delete a task's rows (versions and budget cascade) and record ``task_removed``.

    The caller removes the artifact folder after the commit: a failed commit then leaves
    files and rows intact, and a failed folder removal leaves only unreferenced files.
    A task live on another host of a shared catalog is never removed: that host's live files
    hold its delta, and only that host can switch them away.
    """
    task = get_task(s, name)
    elsewhere = live_elsewhere(s, task.id, host)
    if elsewhere:
        raise Conflict(
            f"task {name!r} is live on {len(elsewhere)} other host(s) sharing this catalog "
            f"({', '.join(elsewhere[:3])}); switch it away there first"
        )
    live = is_live(s, task, host)
    if live and not force:
        raise Conflict(
            f"task {name!r} is live in the deployment; switch away first",
            hint="or use --force to remove it anyway",
        )
    n_versions = len(task.versions)
    # Core DELETE: the database's ON DELETE rules do the cascading, in one statement.
    s.execute(delete(Task).where(Task.id == task.id))
    s.expunge(task)
    s.expire_all()  # rows the database changed by ON DELETE (deployment, budgets) are stale
    events.record_event(
        s, events.TASK_REMOVED, task_name=name, versions=n_versions, forced_while_live=live
    )
    return task
