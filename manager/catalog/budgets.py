"""Storage budgets: one per task (optional) and one global (optional).

A task's budget bounds the bytes of its adapter versions; the global budget bounds the bytes
of all versions of all tasks. Deleted versions do not count.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ScalarSelect, Select, func, select
from sqlalchemy.orm import Session

from manager.catalog import events
from manager.catalog.models import (
    GLOBAL_SCOPE,
    VERSION_DELETED,
    AdapterVersion,
    Budget,
    Task,
    task_scope,
)
from manager.catalog.paging import Page
from manager.catalog.reservations import reserved_bytes
from manager.errors import BadInput, BudgetExceeded
from manager.units import format_size


def _scope(task: Task | None) -> str:
    return GLOBAL_SCOPE if task is None else task_scope(task.id)


def get_budget(s: Session, task: Task | None = None) -> int | None:
    """A task's budget in bytes (the global one if `task` is None), or None if unlimited."""
    row = s.scalars(select(Budget).where(Budget.scope == _scope(task))).one_or_none()
    return None if row is None else row.max_bytes


def set_budget(s: Session, max_bytes: int | None, task: Task | None = None) -> int | None:
    """Set (or with None, clear) a budget and record the change; returns the previous value."""
    if max_bytes is not None and max_bytes < 0:
        raise BadInput("a budget cannot be negative")
    scope = _scope(task)
    row = s.scalars(select(Budget).where(Budget.scope == scope)).one_or_none()
    previous = None if row is None else row.max_bytes
    if max_bytes is None:
        if row is not None:
            s.delete(row)
    elif row is None:
        s.add(Budget(scope=scope, task_id=None if task is None else task.id, max_bytes=max_bytes))
    else:
        row.max_bytes = max_bytes
    s.flush()
    events.record_event(
        s,
        events.BUDGET_CLEARED if max_bytes is None else events.BUDGET_SET,
        task_name=None if task is None else task.name,
        scope=GLOBAL_SCOPE if task is None else "task",
        max_bytes=max_bytes,
        previous=previous,
    )
    return previous


def _used(task_id: Any = None) -> Select:
    """``SELECT sum(bytes)`` of the live versions of one task (an id or a correlated column),
    or of all tasks. All tasks is one scan of a covering index (status, bytes); one task, a
    lookup of the unique (task_id, number) index."""
    q = select(func.coalesce(func.sum(AdapterVersion.bytes), 0)).where(
        AdapterVersion.status != VERSION_DELETED
    )
    return q if task_id is None else q.where(AdapterVersion.task_id == task_id)


def used_column(task_id: Any) -> ScalarSelect:
    """A task's used bytes as a column of a query over tasks (`task_id`: e.g. ``Task.id``)."""
    return _used(task_id).scalar_subquery()


def versions_column(task_id: Any) -> ScalarSelect:
    """How many live versions a task has, as a column of a query over tasks."""
    return (
        select(func.count(AdapterVersion.id))
        .where(AdapterVersion.task_id == task_id, AdapterVersion.status != VERSION_DELETED)
        .scalar_subquery()
    )


def global_max_column() -> ScalarSelect:
    """The global budget (NULL: none), as a column."""
    return select(Budget.max_bytes).where(Budget.scope == GLOBAL_SCOPE).scalar_subquery()


def used_bytes(s: Session, task: Task | None = None) -> int:
    """Bytes of the live (not deleted) versions of `task`, or of all tasks."""
    return int(s.scalar(_used(None if task is None else task.id)) or 0)


def _usage(s: Session, task: Task) -> tuple[int | None, int, int | None, int]:
    """(task budget, task used, global budget, all used): one query."""
    task_max = select(Budget.max_bytes).where(Budget.scope == _scope(task)).scalar_subquery()
    row = s.execute(
        select(
            task_max,
            _used(task.id).scalar_subquery(),
            global_max_column(),
            _used().scalar_subquery(),
        )
    ).one()
    return row[0], int(row[1]), row[2], int(row[3])


def headroom(s: Session, task: Task) -> int | None:
    """Bytes a new version of `task` may take under both budgets (None: no limit)."""
    task_max, task_used, global_max, all_used = _usage(s, task)
    limits = []
    if task_max is not None:
        limits.append(task_max - task_used - reserved_bytes(s, task))
    if global_max is not None:
        limits.append(global_max - all_used - reserved_bytes(s))
    return max(min(limits), 0) if limits else None


def check_fits(s: Session, task: Task, projected_bytes: int) -> None:
    """Raise MgrError unless a new version of `projected_bytes` fits both budgets.

    Bytes reserved by running trainings count as used (the caller's own reservation, if any,
    must be released first in the same transaction).
    """
    task_max, task_used, global_max, all_used = _usage(s, task)
    if task_max is not None:
        used, held = task_used, reserved_bytes(s, task)
        if used + held + projected_bytes > task_max:
            raise BudgetExceeded(
                f"a new version of {task.name!r} needs {format_size(projected_bytes)} but its "
                f"budget is {format_size(task_max)} with {format_size(used)} used"
                + (f" and {format_size(held)} reserved by running trainings" if held else "")
            )
    if global_max is not None:
        used, held = all_used, reserved_bytes(s)
        if used + held + projected_bytes > global_max:
            raise BudgetExceeded(
                f"a new version of {task.name!r} needs {format_size(projected_bytes)} but the "
                f"global budget is {format_size(global_max)} with {format_size(used)} used"
                + (f" and {format_size(held)} reserved by running trainings" if held else "")
            )


class _Usage:
    max_bytes: int | None
    used_bytes: int

    @property
    def used_pct(self) -> float | None:
        """Percent of the budget used (None: no budget, or a zero one)."""
        return 100.0 * self.used_bytes / self.max_bytes if self.max_bytes else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@dataclass
class BudgetUsage(_Usage):
    """One budget (``max_bytes`` None: unlimited) and the bytes its scope holds now."""

    max_bytes: int | None
    used_bytes: int


@dataclass
class TaskBudget(_Usage):
    """A task's budget and the bytes of its versions."""

    task: str
    max_bytes: int | None
    used_bytes: int


@dataclass
class BudgetReport:
    """``mgr budget show``: the global budget and every task's (``to_dict`` is the JSON)."""

    global_budget: BudgetUsage
    tasks: list[TaskBudget]

    def to_dict(self) -> dict[str, Any]:
        return {"global": self.global_budget.to_dict(), "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BudgetReport:
        return cls(BudgetUsage(**d["global"]), [TaskBudget(**t) for t in d["tasks"]])


def global_usage(s: Session) -> BudgetUsage:
    """The global budget and the bytes every live version holds."""
    g = s.execute(select(global_max_column(), _used().scalar_subquery())).one()
    return BudgetUsage(g[0], int(g[1]))


def iter_task_budgets(s: Session, page: Page | None = None) -> Iterator[dict[str, Any]]:
    """Each task of `page` (default: all) as ``TaskBudget.to_dict()`` gives it, one at a time:
    Core rows fetched in batches, the budgets joined, the used bytes summed by the database."""
    ids = (page or Page()).ids().subquery()
    result = s.connection().execute(
        select(ids.c.name, Budget.max_bytes, used_column(ids.c.id))
        .select_from(ids)
        .outerjoin(Budget, Budget.task_id == ids.c.id)
        .order_by(ids.c.name)
    )
    for part in result.partitions(1000):
        for name, max_bytes, used in part:
            yield {"task": name, "max_bytes": max_bytes, "used_bytes": int(used)}


def budget_report(s: Session, page: Page | None = None) -> BudgetReport:
    """The global budget and every task's (or `page`'s), with the bytes each holds now.

    Two queries whatever the number of tasks: the global row, and the page's rows with their
    budgets joined and their used bytes summed by the database.
    """
    return BudgetReport(global_usage(s), [TaskBudget(**d) for d in iter_task_budgets(s, page)])
