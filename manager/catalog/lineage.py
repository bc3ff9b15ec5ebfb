"""Lineage in the catalog: a version's class set, the ``--init`` reference, diffs vs the parent.

A version's class names live in its lineage (``adapter_versions.lineage["classes"]``): a task's
label set may grow after a version was trained, and every version keeps answering with the
classes it was trained on. Versions recorded before lineage existed answer with the task's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from manager.catalog import tasks
from manager.catalog.models import AdapterVersion
from manager.catalog.refs import VersionRef, resolve_version
from manager.errors import NotFound

CHAMPION = "champion"


def version_classes(v: AdapterVersion) -> list[str]:
    """The class names ``v`` was trained on, in label order (what it serves)."""
    recorded = (v.lineage or {}).get("classes")
    return list(recorded) if recorded else list(v.task.class_names)


def classes_of(s: Session, version_id: int) -> list[str]:
    """`version_classes` of the version with id ``version_id``."""
    v = s.get(AdapterVersion, version_id)
    if v is None:
        raise NotFound(f"version id {version_id} is not in the catalog")
    return version_classes(v)


def resolve_init(s: Session, task_name: str, text: str) -> tuple[VersionRef, list[str]]:
    """``--init champion`` (the task's own), ``TASK@V``, ``TASK@ALIAS`` or ``TASK`` (its champion):
    the version to start from, which must be ready, and its class names."""
    from manager.names import parse_version_selector

    if text == CHAMPION:
        name, selector = task_name, None
        if tasks.get_task(s, task_name).active_version is None:
            raise NotFound(f"task {task_name!r} has no champion yet to start from; train it first")
    else:
        name, selector = parse_version_selector(text)
    ref = resolve_version(s, name, selector)
    return ref, classes_of(s, ref.id)


def describe_diff(lineage: dict[str, Any] | None, parent: dict[str, Any] | None) -> str:
    """What changed against the parent, in a few words: ``+120 images, 2 new classes``."""
    if not lineage:
        return "-"
    if not parent:
        return "first" if lineage.get("parent") is None else "parent has no lineage"
    parts = []
    new_train = ((lineage.get("data") or {}).get("train") or {}).get("images")
    old_train = ((parent.get("data") or {}).get("train") or {}).get("images")
    if isinstance(new_train, int) and isinstance(old_train, int) and new_train != old_train:
        parts.append(f"{new_train - old_train:+d} images")
    new_cls, old_cls = lineage.get("classes") or [], parent.get("classes") or []
    added = [c for c in new_cls if c not in old_cls]
    dropped = [c for c in old_cls if c not in new_cls]
    if added:
        parts.append(f"{len(added)} new class{'es' if len(added) != 1 else ''}")
    if dropped:
        parts.append(f"{len(dropped)} class{'es' if len(dropped) != 1 else ''} dropped")
    fp_new = ((lineage.get("data") or {}).get("fingerprint") or {}).get("sha256")
    fp_old = ((parent.get("data") or {}).get("fingerprint") or {}).get("sha256")
    if not parts and fp_new != fp_old:
        parts.append("files changed")
    if lineage.get("settings_hash") != parent.get("settings_hash"):
        parts.append("settings changed")
    return ", ".join(parts) or "same data and settings"


def gate_decisions(s: Session, task: Any) -> dict[int, dict[str, Any]]:
    """Each version's gate decision from the history (the last one recorded), by version id:
    ``{"promoted", "reason", "score", "champion_score", "worst_classes", ...}``."""
    from sqlalchemy import select

    from manager.catalog.aliases import PROMOTION_REFUSED
    from manager.catalog.events import PROMOTED
    from manager.catalog.models import Event

    rows = s.scalars(
        select(Event)
        .where(Event.task_name == task.name, Event.kind.in_((PROMOTED, PROMOTION_REFUSED)))
        .order_by(Event.id)
    )
    out: dict[int, dict[str, Any]] = {}
    for ev in rows:
        d = dict(ev.details or {})
        if ev.version_id is None or d.get("mode") != "gate":
            continue
        out[ev.version_id] = {"promoted": ev.kind == PROMOTED, **d}
    return out
