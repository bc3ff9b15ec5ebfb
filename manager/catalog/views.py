"""Plain-dict views of catalog rows, for --json output and for other parts to print."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session

from manager.catalog import budgets
from manager.catalog.models import VERSION_DELETED, AdapterVersion, Event, Task


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
    return out


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
