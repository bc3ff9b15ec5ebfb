"""The storage report: bytes per task and version against the backbone, budgets, full copies."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from manager.catalog import budgets
from manager.catalog.models import VERSION_DELETED, Task
from manager.catalog.paramcount import FLOAT32_BYTES, ParamInfo, param_info
from manager.catalog.tasks import list_tasks
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store


def _pct(part: int | None, whole: int | None) -> float | None:
    if part is None or not whole:
        return None
    return 100.0 * part / whole


def _on_disk(home: Home, rel: str) -> int | None:
    try:
        path = Store.of(home).resolve(rel)
    except MgrError:  # a path outside the home is never looked at
        return None
    return path.stat().st_size if path.is_file() else None


def _backbone(task: Task, home: Home) -> tuple[int | None, ParamInfo | None]:
    """(backbone float32 bytes, param info of the spec) for a task; None where unknown."""
    try:
        info = param_info(task.backbone_spec, Store.of(home))
    except MgrError:
        info = None
    if task.backbone is not None:  # bound at training: the materialised backbone is the truth
        return task.backbone.param_count * FLOAT32_BYTES, info
    return (info.bytes if info else None), info


def task_storage(s: Session, task: Task, home: Home) -> dict[str, Any]:
    """One task's row of the report, with its versions."""
    backbone_bytes, info = _backbone(task, home)
    active_id = task.active_version_id
    versions = []
    for v in task.versions:
        on_disk = _on_disk(home, v.path) if v.status != VERSION_DELETED else None
        versions.append(
            {
                "number": v.number,
                "method": v.method,
                "status": v.status,
                "active": v.id == active_id,
                "bytes": v.bytes,
                "on_disk_bytes": on_disk,
                "missing": v.status != VERSION_DELETED and on_disk is None,
                "pct_of_backbone": _pct(v.bytes, backbone_bytes),
            }
        )
    used = budgets.used_bytes(s, task)
    budget = budgets.get_budget(s, task)
    # A full fine-tune stores a whole backbone copy plus the task's head, per task.
    full = None
    if info is not None and backbone_bytes is not None:
        full = backbone_bytes + info.head_bytes(task.num_classes)
    return {
        "task": task.name,
        "backbone_spec": task.backbone_spec,
        "backbone_bytes": backbone_bytes,
        "active_version": task.active_version.number if task.active_version else None,
        "versions": versions,
        "used_bytes": used,
        "pct_of_backbone": _pct(used, backbone_bytes),
        "budget_bytes": budget,
        "budget_used_pct": _pct(used, budget),
        "full_finetune_bytes": full,
    }


def storage_report(s: Session, home: Home) -> dict[str, Any]:
    """Every task and version, and totals against the global budget and full fine-tuning."""
    rows = [task_storage(s, t, home) for t in list_tasks(s)]
    used = budgets.used_bytes(s)
    global_budget = budgets.get_budget(s)
    # One shared copy of each distinct backbone serves all of its tasks.
    shared = {r["backbone_spec"]: r["backbone_bytes"] for r in rows}
    known = [b for b in shared.values() if b is not None]
    backbone_total = sum(known) if len(known) == len(shared) else None
    fulls = [r["full_finetune_bytes"] for r in rows]
    full_total = sum(fulls) if None not in fulls else None
    with_adapters = None if backbone_total is None else backbone_total + used
    return {
        "tasks": rows,
        "totals": {
            "tasks": len(rows),
            "versions": sum(
                1 for r in rows for v in r["versions"] if v["status"] != VERSION_DELETED
            ),
            "adapter_bytes": used,
            "global_budget_bytes": global_budget,
            "global_budget_used_pct": _pct(used, global_budget),
            "backbone_bytes": backbone_total,
            "with_adapters_bytes": with_adapters,
            "full_finetune_bytes": full_total,
            "saved_bytes": (
                None if full_total is None or with_adapters is None else full_total - with_adapters
            ),
        },
    }
