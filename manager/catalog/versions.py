"""Adapter versions of a task: numbering, recording, promotion, lookup."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from manager.catalog import events
from manager.catalog.models import VERSION_READY, AdapterVersion, Task
from manager.errors import Conflict, NotFound


def next_version_number(s: Session, task: Task) -> int:
    """1 + the highest number the task ever used (numbers of deleted versions are not reused)."""
    top = s.scalar(select(func.max(AdapterVersion.number)).where(AdapterVersion.task_id == task.id))
    return (top or 0) + 1


def add_version(
    s: Session,
    task: Task,
    *,
    method: str,
    structure: Any,
    bytes: int,
    content_hash: str,
    path: str,
    hyperparams: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    parent_id: int | None = None,
    number: int | None = None,
    status: str = VERSION_READY,
    lineage: dict[str, Any] | None = None,
) -> AdapterVersion:
    """Record a version whose artifact is already written (`path` relative to the home).

    Use a write session (BEGIN IMMEDIATE on SQLite), so the number cannot race.
    """
    version = AdapterVersion(
        task_id=task.id,
        number=number if number is not None else next_version_number(s, task),
        method=method,
        structure=structure,
        hyperparams=hyperparams or {},
        metrics=metrics or {},
        bytes=bytes,
        content_hash=content_hash,
        path=path,
        status=status,
        parent_id=parent_id,
        lineage=lineage,
    )
    s.add(version)
    s.flush()
    events.record_event(
        s,
        events.VERSION_CREATED,
        task_name=task.name,
        version_id=version.id,
        number=version.number,
        method=method,
        bytes=bytes,
    )
    return version


def get_version(s: Session, task: Task, number: int) -> AdapterVersion:
    """Version `number` of `task`; MgrError if there is none."""
    v = s.scalars(
        select(AdapterVersion).where(
            AdapterVersion.task_id == task.id, AdapterVersion.number == number
        )
    ).one_or_none()
    if v is None:
        raise NotFound(f"task {task.name!r} has no version {number}")
    return v


def promote(
    s: Session, task: Task, version: AdapterVersion, *, reason: str = "manual", **details: Any
) -> int | None:
    """Make `version` the task's champion (its active version) and record ``promoted``.

    ``reason`` says who decided ("manual", "gate", "always", "first version"); ``details`` (the
    gate's scores, split and margin) go into the event as they are. Returns the previous
    champion's number.
    """
    if version.task_id != task.id:
        raise Conflict(f"version {version.number} does not belong to task {task.name!r}")
    if version.status != VERSION_READY:
        raise Conflict(f"version {version.number} of {task.name!r} is {version.status}")
    previous = task.active_version.number if task.active_version is not None else None
    task.active_version = version
    s.flush()
    events.record_event(
        s,
        events.PROMOTED,
        task_name=task.name,
        version_id=version.id,
        number=version.number,
        previous=previous,
        alias="champion",
        reason=reason,
        **details,
    )
    return previous
