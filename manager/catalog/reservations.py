"""Budget reservations: bytes a running training has claimed before its artifact exists.

A training reserves its projected artifact size in the same write transaction as its budget
pre-check, so trainings started together cannot all pass a check only one of them fits; the row is
removed when the run records its version (in that transaction) or fails. A row whose process is
gone (same host, dead pid: a killed run) is stale: ignored by every check, deleted by the next
writer. A row of another machine (a shared catalog) cannot be checked by pid: it counts until its
run removes it or until it is `FOREIGN_TTL` old, then it is stale too. Taking a day-old run
elsewhere for dead risks little: its recording transaction re-checks the budgets, and its epoch
checkpoint is in its own home, so a second run of the task here clobbers nothing.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from manager.catalog.models import Reservation, Task
from manager.errors import Busy
from manager.store.fs import pid_alive

FOREIGN_TTL = timedelta(hours=24)


def _host() -> str:
    return socket.gethostname()


def _is_live(row: Reservation, host: str, now: datetime) -> bool:
    if row.host == host:
        return pid_alive(row.pid)
    created = row.created_at
    if created.tzinfo is None:  # SQLite returns the stored UTC time without its zone
        created = created.replace(tzinfo=timezone.utc)
    return now - created < FOREIGN_TTL


def live_reservations(s: Session, task: Task | None = None) -> list[Reservation]:
    """The reservations of running trainings (of ``task``, or of all tasks); stale ones skipped."""
    q = select(Reservation).order_by(Reservation.id)
    if task is not None:
        q = q.where(Reservation.task_id == task.id)
    host, now = _host(), datetime.now(timezone.utc)
    return [r for r in s.scalars(q) if _is_live(r, host, now)]


def reserved_bytes(s: Session, task: Task | None = None) -> int:
    """Bytes held by running trainings of ``task`` (or of all tasks)."""
    return sum(r.bytes for r in live_reservations(s, task))


def purge_stale(s: Session) -> int:
    """Delete the rows of this host's dead processes (write sessions only); returns the count."""
    host, now = _host(), datetime.now(timezone.utc)
    stale = [r.id for r in s.scalars(select(Reservation)) if not _is_live(r, host, now)]
    if stale:
        s.execute(delete(Reservation).where(Reservation.id.in_(stale)))
        s.flush()
    return len(stale)


def reserve(s: Session, task: Task, nbytes: int) -> int:
    """Claim ``nbytes`` for a training of ``task`` by this process; returns the reservation id.

    Call it in the write transaction that checked the budgets. One training per task at a time:
    two would share (and clobber) the task's epoch checkpoint.
    """
    purge_stale(s)
    running = live_reservations(s, task)
    if running:
        other = running[0]
        raise Busy(
            f"task {task.name!r} is being trained now (pid {other.pid} on {other.host}); "
            "wait for that run to finish"
        )
    row = Reservation(task_id=task.id, bytes=int(nbytes), host=_host(), pid=os.getpid())
    s.add(row)
    s.flush()
    return row.id


def release(s: Session, reservation_id: int) -> bool:
    """Remove a reservation; False if it was already gone."""
    res = s.execute(delete(Reservation).where(Reservation.id == reservation_id))
    s.flush()
    return bool(res.rowcount)
