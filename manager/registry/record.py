"""Recording a trained version: artifact file and catalog row together, or neither.

The delta is written through the store to a pending name (``.pending-<pid>-<rnd>``, which ``mgr gc``
knows), then one write transaction releases the run's budget reservation, re-checks the budgets,
numbers the version, renames the file to ``v<N>``, records it and applies the promotion decision
(the gate's, see ``manager.train.gate``). Any failure removes the file and rolls the rows back; a
kill leaves at most a pending file for gc.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from manager.catalog import Catalog, budgets, events, reservations, tasks, versions
from manager.catalog.aliases import PROMOTION_REFUSED, PromotionDecision
from manager.catalog.models import AdapterVersion, Task
from manager.delta.delta import Delta
from manager.delta.structure import format_structure
from manager.errors import Conflict, Diverged
from manager.store.fs import Store


@dataclass(frozen=True)
class RecordedVersion:
    task: str
    number: int
    version_id: int
    path: Path
    bytes: int
    content_hash: str
    # What happened to the champion: {"promoted": bool, "reason", ...the gate's details}.
    promotion: dict[str, Any] | None = None


def record_version(
    catalog: Catalog,
    task_name: str,
    delta: Delta,
    *,
    structure: Any = None,
    hyperparams: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    parent_id: int | None = None,
    promote: bool | PromotionDecision = True,
    reservation: int | None = None,
    lineage: dict[str, Any] | None = None,
) -> RecordedVersion:
    """Write ``delta`` as the next version of ``task_name`` and record it (see the module doc).

    ``structure``: any spelling (recorded as ``[[g, shuffle], ...]``). ``promote``: make it the
    active version (the first version of a task always is); a gate's `PromotionDecision` is
    applied in the recording transaction and written to the history. ``reservation``: the
    run's budget reservation, removed in the recording transaction. A delta holding NaN or
    infinite values is refused before anything is written.
    """
    bad = delta.nonfinite()
    if bad:
        raise Diverged(
            f"refusing to record a version of {task_name!r}: its delta holds NaN or infinite "
            f"values ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''})"
        )
    store = Store.of(catalog.home)
    data = delta.to_bytes()
    digest = hashlib.sha256(data).hexdigest()
    written = store.pending_artifact(task_name)
    store.write_bytes(written, data, what=f"a new version of {task_name!r}")
    try:
        with catalog.session() as s:
            task = tasks.get_task(s, task_name)
            bound = task.backbone
            if bound is not None and delta.meta.backbone_hash != bound.content_hash:
                raise Conflict(
                    f"the delta was trained on backbone {delta.meta.backbone_hash[:12]}, "
                    f"but task {task_name!r} uses {bound.content_hash[:12]} ({bound.spec})"
                )
            if reservation is not None:
                reservations.release(s, reservation)  # its bytes become the version's
            budgets.check_fits(s, task, len(data))
            number = versions.next_version_number(s, task)
            path = store.artifact(task_name, number)
            if path.exists() or path.is_symlink():
                raise Conflict(
                    f"{path} exists but is not in the catalog; move it away and train again",
                    hint="'mgr gc' removes such leftovers",
                )
            written = store.replace(written, path)
            version = versions.add_version(
                s,
                task,
                method=delta.meta.method,
                structure=format_structure(structure, "json") if structure else None,
                bytes=len(data),
                content_hash=digest,
                path=store.rel(path),
                hyperparams=hyperparams,
                metrics=metrics,
                parent_id=parent_id,
                number=number,
                lineage=lineage,
            )
            promotion = _apply_promotion(s, task, version, promote)
            version_id = version.id
    except BaseException:
        store.unlink(written)
        raise
    return RecordedVersion(task_name, number, version_id, written, len(data), digest, promotion)


def _apply_promotion(
    s: Session, task: Task, version: AdapterVersion, promote: bool | PromotionDecision
) -> dict[str, Any]:
    """Promote or not, as decided; a gate's decision (either way) goes into the history."""
    if not isinstance(promote, PromotionDecision):
        mode = "always" if promote else "never"
        promote = PromotionDecision(mode, bool(promote), "--promote " + mode)
    details, promoted, reason = dict(promote.details), promote.promote, promote.reason
    if task.active_version_id is None:
        promoted, reason = True, "first version"
    elif promote.mode == "gate" and task.active_version_id != promote.champion_id:
        # The gate scored another champion than the one there now: its verdict is moot.
        now = task.active_version.number if task.active_version else None
        promoted, reason = False, f"the champion changed during the run (now v{now}); not compared"
    if promoted:
        versions.promote(s, task, version, reason=reason, mode=promote.mode, **details)
    elif promote.mode == "gate":
        events.record_event(
            s,
            PROMOTION_REFUSED,
            task_name=task.name,
            version_id=version.id,
            number=version.number,
            champion=task.active_version.number if task.active_version else None,
            reason=reason,
            mode=promote.mode,
            **details,
        )
    return {"mode": promote.mode, "promoted": promoted, "reason": reason, **details}
