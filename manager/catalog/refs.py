"""Plain, session-free copies of the catalog rows a switch works with.

A switch reads the catalog in one short transaction and then works for a while without one; these
frozen copies carry what it needs, so no detached ORM object is touched after its session ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from manager.catalog import aliases, tasks, versions
from manager.catalog.models import VERSION_READY, AdapterVersion, Backbone, Task
from manager.errors import Conflict, NotFound
from manager.names import CHAMPION, Selector, parse_selector


@dataclass(frozen=True)
class VersionRef:
    """What a switch needs of a version row, detached from any session."""

    id: int
    task_id: int
    task: str
    number: int
    method: str
    path: str
    bytes: int
    content_hash: str
    num_classes: int
    backbone_id: int | None

    @classmethod
    def of(cls, v: AdapterVersion) -> VersionRef:
        return cls(
            v.id,
            v.task_id,
            v.task.name,
            v.number,
            v.method,
            v.path,
            v.bytes,
            v.content_hash,
            len(v.lineage["classes"]) if (v.lineage or {}).get("classes") else v.task.num_classes,
            v.task.backbone_id,
        )

    @property
    def label(self) -> str:
        return f"{self.task}@{self.number}"


@dataclass(frozen=True)
class BackboneRef:
    """The backbone row's identity and file record, detached from any session."""

    id: int
    spec: str
    content_hash: str
    path: str
    bytes: int
    file_mtime_ns: int | None

    @classmethod
    def of(cls, row: Backbone) -> BackboneRef:
        return cls(row.id, row.spec, row.content_hash, row.path, row.bytes, row.file_mtime_ns)


def select_version(s: Session, task: Task, selector: Selector) -> AdapterVersion:
    """The version ``selector`` names: a number, an alias name (``"champion"``: the active
    version; ``"3"``/``"v3"`` read as numbers) or None (the champion). Any status."""
    if isinstance(selector, str):
        selector = parse_selector(selector, task.name)
    if selector is None:
        selector = CHAMPION
    if isinstance(selector, str):
        return aliases.lookup_alias(s, task, selector)
    return versions.get_version(s, task, selector)


def resolve_version(s: Session, task_name: str, selector: Selector) -> VersionRef:
    """The task's version ``selector`` (int | alias str | None: its champion), which must be
    ready. Every command that takes ``TASK[@VERSION|@ALIAS]`` resolves it here."""
    task = tasks.get_task(s, task_name)
    if selector is None and task.active_version is None:
        raise NotFound(f"task {task_name!r} has no active version; train it first")
    v = select_version(s, task, selector)
    if v.status != VERSION_READY:
        raise Conflict(f"version {v.number} of {task_name!r} is {v.status}")
    if task.backbone_id is None:
        raise Conflict(f"task {task_name!r} is not bound to a backbone (never trained)")
    return VersionRef.of(v)


def version_number(s: Session, task_name: str, selector: Selector) -> int | None:
    """``selector`` as a version number (None stays None: the champion when it is used)."""
    if selector is None or isinstance(selector, int):
        return selector
    return select_version(s, tasks.get_task(s, task_name), selector).number
