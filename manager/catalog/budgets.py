"""Storage budgets: one per task (optional) and one global (optional).

A task's budget bounds the bytes of its adapter versions; the global budget bounds the bytes
of all versions of all tasks. Deleted versions do not count.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, select
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
from manager.catalog.reservations import reserved_bytes
from manager.errors import MgrError
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
        raise MgrError("a budget cannot be negative")
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


def used_bytes(s: Session, task: Task | None = None) -> int:
    """Bytes of the live (not deleted) versions of `task`, or of all tasks."""
    q = select(func.coalesce(func.sum(AdapterVersion.bytes), 0)).where(
        AdapterVersion.status != VERSION_DELETED
    )
    if task is not None:
        q = q.where(AdapterVersion.task_id == task.id)
    return int(s.scalar(q) or 0)


def headroom(s: Session, task: Task) -> int | None:
    """Bytes a new version of `task` may take under both budgets (None: no limit)."""
    limits = []
    task_max = get_budget(s, task)
    if task_max is not None:
        limits.append(task_max - used_bytes(s, task) - reserved_bytes(s, task))
    global_max = get_budget(s)
    if global_max is not None:
        limits.append(global_max - used_bytes(s) - reserved_bytes(s))
    return max(min(limits), 0) if limits else None


def check_fits(s: Session, task: Task, projected_bytes: int) -> None:
    """Raise MgrError unless a new version of `projected_bytes` fits both budgets.

    Bytes reserved by running trainings count as used (the caller's own reservation, if any,
    must be released first in the same transaction).
    """
    task_max = get_budget(s, task)
    if task_max is not None:
        used, held = used_bytes(s, task), reserved_bytes(s, task)
        if used + held + projected_bytes > task_max:
            raise MgrError(
                f"a new version of {task.name!r} needs {format_size(projected_bytes)} but its "
                f"budget is {format_size(task_max)} with {format_size(used)} used"
                + (f" and {format_size(held)} reserved by running trainings" if held else "")
            )
    global_max = get_budget(s)
    if global_max is not None:
        used, held = used_bytes(s), reserved_bytes(s)
        if used + held + projected_bytes > global_max:
            raise MgrError(
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


def budget_report(s: Session) -> BudgetReport:
    """The global budget and every task's, with the bytes each holds now."""
    tasks = s.scalars(select(Task).order_by(Task.name)).all()
    return BudgetReport(
        BudgetUsage(get_budget(s), used_bytes(s)),
        [TaskBudget(t.name, get_budget(s, t), used_bytes(s, t)) for t in tasks],
    )
