"""Aliases, tags, promotion and rollback: named pointers to a task's versions, with history.

``champion`` is the one alias every task has: its active version (``tasks.active_version_id``),
which every command already follows; it is never stored in ``aliases``. Every change is an event
in the same transaction, so ``mgr history`` can say who pointed what where, and when.

Rollback walks the alias's promotion history back like a stack: each promotion pushes a version,
each rollback pops back to the one before (skipping versions deleted since), so a second rollback
goes further back; promoting again pushes anew.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from manager.catalog import events, versions
from manager.catalog.models import VERSION_READY, AdapterVersion, Alias, Event, Task, VersionTag
from manager.errors import BadInput, Conflict, MgrError, NotFound
from manager.names import CHAMPION, validate_alias_name, validate_task_name

# History kinds of this module (``promoted`` lives in events: the trainer records it too).
ROLLED_BACK = "rolled_back"
PROMOTION_REFUSED = "promotion_refused"
ALIAS_SET = "alias_set"
ALIAS_REMOVED = "alias_removed"
TAGGED = "tagged"
UNTAGGED = "untagged"


@dataclass(frozen=True)
class PromotionDecision:
    """What the promotion gate decided for a new version, applied when it is recorded.

    ``champion_id``: the champion the decision compared against; if another version became the
    champion meanwhile, a gate's "promote" is not applied (it compared against the wrong one).
    ``details`` (scores, split, margin, ...) go into the history event as they are.
    """

    mode: str  # gate | always | never
    promote: bool
    reason: str
    champion_id: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


# -- aliases ------------------------------------------------------------------------------------


def find_alias(s: Session, task: Task, name: str) -> Alias | None:
    """The stored alias ``name`` of ``task`` (never ``champion``), or None."""
    return s.scalars(
        select(Alias).where(Alias.task_id == task.id, Alias.name == name)
    ).one_or_none()


def list_aliases(s: Session, task: Task) -> list[tuple[str, AdapterVersion | None]]:
    """``champion`` (the active version, maybe None) first, then the stored aliases by name."""
    rows = s.scalars(select(Alias).where(Alias.task_id == task.id).order_by(Alias.name)).all()
    return [(CHAMPION, task.active_version), *((a.name, a.version) for a in rows)]


def alias_names(s: Session, task: Task) -> list[str]:
    return [name for name, _ in list_aliases(s, task)]


def aliases_by_version(s: Session, task: Task) -> dict[int, list[str]]:
    """Version id -> the alias names pointing at it (``champion`` included)."""
    out: dict[int, list[str]] = {}
    for name, v in list_aliases(s, task):
        if v is not None:
            out.setdefault(v.id, []).append(name)
    return out


def lookup_alias(s: Session, task: Task, name: str) -> AdapterVersion:
    """The version alias ``name`` points at; one line listing the task's aliases if none."""
    if name == CHAMPION:
        if task.active_version is None:
            raise NotFound(f"task {task.name!r} has no champion yet; train it first")
        return task.active_version
    row = find_alias(s, task, name)
    if row is None:
        known = ", ".join(alias_names(s, task))
        raise NotFound(f"task {task.name!r} has no alias {name!r} (its aliases: {known})")
    return row.version


def _ready(task: Task, version: AdapterVersion) -> None:
    if version.task_id != task.id:
        raise Conflict(f"version {version.number} does not belong to task {task.name!r}")
    if version.status != VERSION_READY:
        raise Conflict(f"version {version.number} of {task.name!r} is {version.status}")


def set_alias(
    s: Session,
    task: Task,
    name: str,
    version: AdapterVersion,
    *,
    kind: str = ALIAS_SET,
    reason: str = "manual",
    **details: Any,
) -> int | None:
    """Point alias ``name`` at ``version`` (``champion``: promote it); the previous number."""
    validate_alias_name(name, settable=False)
    if name == CHAMPION:
        return versions.promote(s, task, version, reason=reason, **details)
    _ready(task, version)
    row = find_alias(s, task, name)
    previous = row.version.number if row is not None else None
    if row is None:
        s.add(Alias(task_id=task.id, name=name, version_id=version.id))
    else:
        row.version_id = version.id
    s.flush()
    events.record_event(
        s,
        kind,
        task_name=task.name,
        version_id=version.id,
        alias=name,
        number=version.number,
        previous=previous,
        reason=reason,
        **details,
    )
    return previous


def remove_alias(s: Session, task: Task, name: str) -> int:
    """Remove alias ``name`` (never ``champion``); the number it pointed at."""
    validate_alias_name(name)
    row = find_alias(s, task, name)
    if row is None:
        lookup_alias(s, task, name)  # the one-line error naming the task's aliases
    assert row is not None
    number = row.version.number
    s.delete(row)
    s.flush()
    events.record_event(
        s, ALIAS_REMOVED, task_name=task.name, version_id=row.version_id, alias=name, number=number
    )
    return number


def promote(
    s: Session, task: Task, version: AdapterVersion, alias: str = CHAMPION, reason: str = "manual"
) -> int | None:
    """``mgr promote``: point ``alias`` (default the champion) at ``version``; the previous one."""
    return set_alias(s, task, alias, version, kind=events.PROMOTED, reason=reason)


# -- rollback -----------------------------------------------------------------------------------


def _since_added(s: Session, task: Task) -> Iterable[Event]:
    """The task's events since it was (last) added: a removed task's name may be reused."""
    added = s.scalar(
        select(Event.id)
        .where(Event.task_name == task.name, Event.kind == events.TASK_ADDED)
        .order_by(Event.id.desc())
        .limit(1)
    )
    kinds = (events.PROMOTED, ALIAS_SET, ALIAS_REMOVED, ROLLED_BACK)
    return s.scalars(
        select(Event)
        .where(Event.task_name == task.name, Event.id > (added or 0), Event.kind.in_(kinds))
        .order_by(Event.id)
    )


def _alias_of(e: Event) -> str:
    return (e.details or {}).get("alias") or CHAMPION  # events before aliases: the champion


def promotion_stack(s: Session, task: Task, alias: str = CHAMPION) -> list[int]:
    """The version ids ``alias`` was pointed at, oldest first, as rollbacks left them."""
    stack: list[int] = []
    for e in _since_added(s, task):
        if _alias_of(e) != alias or e.version_id is None:
            continue
        if e.kind == ALIAS_REMOVED:
            stack.clear()
        elif e.kind == ROLLED_BACK:
            while stack and stack[-1] != e.version_id:
                stack.pop()
            if not stack:
                stack.append(e.version_id)
        elif not stack or stack[-1] != e.version_id:
            stack.append(e.version_id)
    return stack


def rollback(
    s: Session, task: Task, alias: str = CHAMPION
) -> tuple[AdapterVersion | None, AdapterVersion, list[int]]:
    """Point ``alias`` back at its previous version; (was, now, numbers skipped as deleted)."""
    validate_alias_name(alias, settable=False)
    current = lookup_alias(s, task, alias)
    stack = promotion_stack(s, task, alias)
    skipped: list[int] = []
    while stack:
        v = s.get(AdapterVersion, stack[-1])
        usable = v is not None and v.task_id == task.id and v.status == VERSION_READY
        if usable and v.id != current.id:
            break
        if v is not None and v.id != current.id and v.task_id == task.id:
            skipped.append(v.number)
        stack.pop()
    if not stack:
        gone = f" ({', '.join(f'v{n}' for n in skipped)} deleted since)" if skipped else ""
        raise Conflict(
            f"nothing to roll back to: {task.name}@{alias} (v{current.number}) has no earlier "
            f"version in its history{gone}"
        )
    target = s.get(AdapterVersion, stack[-1])
    assert target is not None
    if alias == CHAMPION:
        task.active_version = target
    else:
        row = find_alias(s, task, alias)
        assert row is not None
        row.version_id = target.id
    s.flush()
    events.record_event(
        s,
        ROLLED_BACK,
        task_name=task.name,
        version_id=target.id,
        alias=alias,
        number=target.number,
        previous=current.number,
        skipped=skipped,
        reason="manual",
    )
    return current, target, skipped


# -- tags ---------------------------------------------------------------------------------------


def validate_tag(name: str) -> str:
    """Tags are free labels, spelled like task names (``reviewed``, ``2026-q4``)."""
    try:
        return validate_task_name(name)
    except MgrError:
        raise BadInput(
            f"bad tag {name[:40]!r}: use lower-case letters, digits, '-' and '_', starting with "
            "a letter or digit, at most 64 characters"
        ) from None


def tag(s: Session, task: Task, version: AdapterVersion, names: Iterable[str]) -> list[str]:
    """Add tags to ``version`` (present ones are left); the ones added."""
    have = set(tags_of(s, version))
    added = [n for n in dict.fromkeys(map(validate_tag, names)) if n not in have]
    for n in added:
        s.add(VersionTag(version_id=version.id, name=n))
    s.flush()
    if added:
        events.record_event(
            s, TAGGED, task_name=task.name, version_id=version.id, number=version.number, tags=added
        )
    return added


def untag(s: Session, task: Task, version: AdapterVersion, names: Iterable[str]) -> list[str]:
    """Remove tags from ``version``; MgrError naming its tags if one is not there."""
    wanted = list(dict.fromkeys(map(validate_tag, names)))
    have = tags_of(s, version)
    missing = [n for n in wanted if n not in have]
    if missing:
        shown = ", ".join(have) or "none"
        raise NotFound(
            f"{task.name}@{version.number} has no tag {missing[0]!r} (its tags: {shown})"
        )
    s.execute(
        delete(VersionTag).where(VersionTag.version_id == version.id, VersionTag.name.in_(wanted))
    )
    events.record_event(
        s, UNTAGGED, task_name=task.name, version_id=version.id, number=version.number, tags=wanted
    )
    return wanted


def tags_of(s: Session, version: AdapterVersion) -> list[str]:
    return list(
        s.scalars(
            select(VersionTag.name)
            .where(VersionTag.version_id == version.id)
            .order_by(VersionTag.name)
        )
    )


def tags_by_version(s: Session, task: Task) -> dict[int, list[str]]:
    """Version id -> its tags, for every version of ``task`` (one query)."""
    rows = s.execute(
        select(VersionTag.version_id, VersionTag.name)
        .join(AdapterVersion, AdapterVersion.id == VersionTag.version_id)
        .where(AdapterVersion.task_id == task.id)
        .order_by(VersionTag.name)
    )
    out: dict[int, list[str]] = {}
    for vid, name in rows:
        out.setdefault(vid, []).append(name)
    return out
