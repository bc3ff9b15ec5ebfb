"""What was live, and which version was each task's champion, at a past moment.

Read back from the append-only history: a host's live version is the target of its last
``switched`` event at or before that time; a task's champion is replayed from its ``promoted`` and
``rolled_back`` events (the champion alias only), from its last ``task_added`` on. Switches recorded
before events named their host (host NULL) count as every host's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from manager.catalog import events
from manager.catalog.aliases import ROLLED_BACK
from manager.catalog.models import Event
from manager.catalog.views import iso
from manager.errors import BadInput
from manager.names import CHAMPION

_AGO = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)\s*([smhdw])(?:\s+ago)?")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """An aware UTC time from ISO 8601 (no offset: local time) or a span ago ("90m", "3d")."""
    now = now or datetime.now(timezone.utc)
    raw = str(text).strip()
    shown = raw if len(raw) <= 40 else raw[:36] + "..."
    m = _AGO.fullmatch(raw)
    try:
        if m:
            return now - timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
        try:
            when = datetime.fromisoformat(raw[:-1] + "+00:00" if raw.endswith("Z") else raw)
        except ValueError:
            raise BadInput(
                f"bad time {shown!r}: use ISO 8601 (2026-11-25T14:30, 2026-11-25T14:30:00+00:00) "
                "or a span ago (90s, 15m, 2h, 3d, 1w)"
            ) from None
        if when.tzinfo is None:
            # The user's local time. astimezone() asks the C library, which cannot place the
            # years near 1 or 9999: there, today's offset.
            try:
                when = when.astimezone()
            except (OverflowError, ValueError, OSError):
                when = when.replace(tzinfo=datetime.now().astimezone().tzinfo)
        when = when.astimezone(timezone.utc)
        return when
    except (OverflowError, ValueError):
        # The parse succeeded; the date arithmetic (a span, the offset to UTC) left the calendar.
        raise BadInput(
            f"time {shown!r} is out of range: it must fall between the years 1 and 9999 in UTC"
        ) from None


@dataclass(frozen=True)
class LiveThen:
    """What one host served at the time: ``version`` is ``task@N`` (None: the backbone alone)."""

    host: str | None
    version: str | None
    since: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"host": self.host, "version": self.version, "since": iso(self.since)}


@dataclass(frozen=True)
class ChampionThen:
    task: str
    version: int | None
    since: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "version": self.version, "since": iso(self.since)}


def _upto(at: datetime) -> Any:
    # In UTC: SQLite keeps naive UTC text (the offset is dropped when bound); PostgreSQL compares
    # aware times as instants.
    return Event.at <= at.astimezone(timezone.utc)


def live_at(s: Session, at: datetime, host: str | None) -> list[LiveThen]:
    """Each host's live versions at ``at``, one per backbone it had live (``host`` given: that
    host's only)."""
    q = select(Event).where(Event.kind == events.SWITCHED, _upto(at)).order_by(Event.id)
    if host is not None:
        q = q.where(or_(Event.host == host, Event.host.is_(None)))
    last: dict[tuple[str | None, str | None], Event] = {}
    for e in s.scalars(q):
        # Events from before live folders per backbone name none: one live file per host then.
        backbone = (e.details or {}).get("backbone_hash")
        last[(host if host is not None else e.host, backbone)] = e
    out = [LiveThen(h, (e.details or {}).get("to"), e.at) for (h, _), e in last.items()]
    if host is not None and not out:
        out = [LiveThen(host, None, None)]  # never switched by then: nothing was live
    return sorted(out, key=lambda x: x.host or "")


def champions_at(s: Session, at: datetime) -> list[ChampionThen]:
    """Every task that existed at ``at``, with its champion then (None: not trained yet)."""
    kinds = (events.TASK_ADDED, events.TASK_REMOVED, events.PROMOTED, ROLLED_BACK)
    q = select(Event).where(Event.kind.in_(kinds), _upto(at)).order_by(Event.id)
    now: dict[str, ChampionThen] = {}
    for e in s.scalars(q):
        name = e.task_name
        if name is None:
            continue
        if e.kind == events.TASK_ADDED:
            now[name] = ChampionThen(name, None, None)
        elif e.kind == events.TASK_REMOVED:
            now.pop(name, None)
        elif name in now and (e.details or {}).get("alias", CHAMPION) == CHAMPION:
            now[name] = ChampionThen(name, (e.details or {}).get("number"), e.at)
    return [now[n] for n in sorted(now)]
