"""Plain-dict views of catalog rows, for --json output and for other parts to print."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, aliased

from manager.catalog import budgets
from manager.catalog.models import VERSION_DELETED, AdapterVersion, Budget, Event, Task
from manager.catalog.paging import Page


def iso(dt: datetime | None) -> str | None:
    """ISO-8601 in UTC. SQLite hands back naive datetimes; they were stored as UTC."""
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat()


def version_dict(v: AdapterVersion) -> dict[str, Any]:
    return {
        "id": v.id,
        "number": v.number,
        "method": v.method,
        "status": v.status,
        "bytes": v.bytes,
        "content_hash": v.content_hash,
        "path": v.path,
        "parent_id": v.parent_id,
        "structure": v.structure,
        "hyperparams": v.hyperparams,
        "metrics": v.metrics,
        "lineage": v.lineage,
        "created_at": iso(v.created_at),
    }


def task_dict(s: Session, task: Task, full: bool = False) -> dict[str, Any]:
    """A task with its budget and usage; `full` adds class names and every version."""
    live = [v for v in task.versions if v.status != VERSION_DELETED]
    out: dict[str, Any] = {
        "name": task.name,
        "dataset": task.dataset,
        "data_root": task.data_root,
        "num_classes": task.num_classes,
        "backbone_spec": task.backbone_spec,
        "weights": task.weights,
        "backbone_id": task.backbone_id,
        "active_version": task.active_version.number if task.active_version else None,
        "versions": len(live),
        "budget_bytes": budgets.get_budget(s, task),
        "used_bytes": budgets.used_bytes(s, task),
        "created_at": iso(task.created_at),
    }
    if full:
        out["class_names"] = list(task.class_names)
        out["versions"] = [version_dict(v) for v in task.versions]
        bb = task.backbone  # the materialised spec every version is bound to (None: untrained)
        out["bound_backbone"] = (
            {"spec": bb.spec, "content_hash": bb.content_hash} if bb is not None else None
        )
    return out


def task_rows(s: Session, page: Page | None = None) -> list[dict[str, Any]]:
    """``task_dict`` of every task of `page` (default: all), in one query."""
    return list(iter_task_rows(s, page))


def iter_task_rows(s: Session, page: Page | None = None) -> Iterator[dict[str, Any]]:
    """`task_rows` one at a time, as the database hands them over (``task list --json``).

    The active version's number comes by a join, the budget by a join, the live versions'
    count and bytes from the database (correlated sums on the (task_id, number) index). Core
    rows, fetched in batches: no ORM object per row.
    """
    ids = (page or Page()).ids().subquery()
    active = aliased(AdapterVersion)
    q = (
        select(
            Task.name,
            Task.dataset,
            Task.data_root,
            Task.num_classes,
            Task.backbone_spec,
            Task.weights,
            Task.backbone_id,
            active.number,
            budgets.versions_column(Task.id),
            Budget.max_bytes,
            budgets.used_column(Task.id),
            Task.created_at,
        )
        .select_from(ids)
        .join(Task, Task.id == ids.c.id)
        .outerjoin(active, active.id == Task.active_version_id)
        .outerjoin(Budget, Budget.task_id == Task.id)
        .order_by(ids.c.name)
    )
    for part in s.connection().execute(q).partitions(1000):
        for r in part:
            yield {
                "name": r[0],
                "dataset": r[1],
                "data_root": r[2],
                "num_classes": r[3],
                "backbone_spec": r[4],
                "weights": r[5],
                "backbone_id": r[6],
                "active_version": r[7],
                "versions": int(r[8]),
                "budget_bytes": r[9],
                "used_bytes": int(r[10]),
                "created_at": iso(r[11]),
            }


def event_dict(e: Event) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": iso(e.at),
        "kind": e.kind,
        "task": e.task_name,
        "version_id": e.version_id,
        "host": e.host,
        "details": e.details,
    }
