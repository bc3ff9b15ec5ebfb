"""The append-only history. Record events in the same session as the change they describe."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from manager.catalog.models import Event

TASK_ADDED = "task_added"
TASK_REMOVED = "task_removed"
VERSION_CREATED = "version_created"
VERSION_DELETED = "version_deleted"
PROMOTED = "promoted"
SWITCHED = "switched"
BUDGET_SET = "budget_set"
BUDGET_CLEARED = "budget_cleared"
GC = "gc"


def record_event(
    s: Session,
    kind: str,
    task_name: str | None = None,
    version_id: int | None = None,
    host: str | None = None,
    **details: Any,
) -> Event:
    """Append one event (flushed, so it commits or rolls back with the change).

    ``host``: the home whose deployment the event changed (switches), None for catalog events.
    """
    ev = Event(kind=kind, task_name=task_name, version_id=version_id, host=host, details=details)
    s.add(ev)
    s.flush()
    return ev


def list_events(
    s: Session, task_name: str | None = None, limit: int | None = None, offset: int = 0
) -> list[Event]:
    """Events, oldest first; with `limit`, the newest `limit` of them, after skipping the
    newest `offset` (so ``offset=limit`` is the page before). Newest first by id: the primary
    key (or the task_name index) gives the order, so a page costs its rows, not the log's."""
    q = select(Event).order_by(Event.id.desc())
    if task_name is not None:
        q = q.where(Event.task_name == task_name)
    if limit is not None:
        q = q.limit(limit)
    if offset:
        q = q.offset(offset)
    return list(reversed(s.scalars(q).all()))
