"""The storage report: bytes per task and version against the backbone, budgets, full copies."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
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


def _top1(metrics: dict[str, Any] | None) -> float | None:
    value = (metrics or {}).get("top1")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


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


@dataclass
class VersionStorage:
    """One adapter version: recorded bytes, bytes found on disk (None: missing or deleted)."""

    number: int
    method: str
    status: str
    active: bool
    bytes: int
    on_disk_bytes: int | None
    missing: bool
    pct_of_backbone: float | None
    top1: float | None = None  # % on the evaluation split the version was trained with

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionStorage:
        return cls(**d)


@dataclass
class TaskStorage:
    """One task's row: its versions, bytes against its backbone and budget, a full copy's cost."""

    task: str
    backbone_spec: str
    backbone_bytes: int | None
    active_version: int | None
    versions: list[VersionStorage]
    used_bytes: int
    pct_of_backbone: float | None
    budget_bytes: int | None
    budget_used_pct: float | None
    full_finetune_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskStorage:
        return cls(**{**d, "versions": [VersionStorage.from_dict(v) for v in d["versions"]]})


@dataclass
class StorageTotals:
    """All tasks: adapters against the global budget, shared backbones and full copies."""

    tasks: int
    versions: int
    adapter_bytes: int
    global_budget_bytes: int | None
    global_budget_used_pct: float | None
    backbone_bytes: int | None
    with_adapters_bytes: int | None
    full_finetune_bytes: int | None
    saved_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StorageTotals:
        return cls(**d)


@dataclass
class StorageReport:
    """``mgr storage``: every task and version, and the totals (``to_dict`` is the JSON)."""

    tasks: list[TaskStorage]
    totals: StorageTotals

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StorageReport:
        return cls(
            [TaskStorage.from_dict(t) for t in d["tasks"]], StorageTotals.from_dict(d["totals"])
        )


def task_storage(s: Session, task: Task, home: Home) -> TaskStorage:
    """One task's row of the report, with its versions."""
    backbone_bytes, info = _backbone(task, home)
    active_id = task.active_version_id
    versions = []
    for v in task.versions:
        on_disk = _on_disk(home, v.path) if v.status != VERSION_DELETED else None
        versions.append(
            VersionStorage(
                number=v.number,
                method=v.method,
                status=v.status,
                active=v.id == active_id,
                bytes=v.bytes,
                on_disk_bytes=on_disk,
                missing=v.status != VERSION_DELETED and on_disk is None,
                pct_of_backbone=_pct(v.bytes, backbone_bytes),
                top1=_top1(v.metrics),
            )
        )
    used = budgets.used_bytes(s, task)
    budget = budgets.get_budget(s, task)
    # A full fine-tune stores a whole backbone copy plus the task's head, per task.
    full = None
    if info is not None and backbone_bytes is not None:
        full = backbone_bytes + info.head_bytes(task.num_classes)
    return TaskStorage(
        task=task.name,
        backbone_spec=task.backbone_spec,
        backbone_bytes=backbone_bytes,
        active_version=task.active_version.number if task.active_version else None,
        versions=versions,
        used_bytes=used,
        pct_of_backbone=_pct(used, backbone_bytes),
        budget_bytes=budget,
        budget_used_pct=_pct(used, budget),
        full_finetune_bytes=full,
    )


def storage_report(s: Session, home: Home) -> StorageReport:
    """Every task and version, and totals against the global budget and full fine-tuning."""
    rows = [task_storage(s, t, home) for t in list_tasks(s)]
    used = budgets.used_bytes(s)
    global_budget = budgets.get_budget(s)
    # One shared copy of each distinct backbone serves all of its tasks.
    shared = {r.backbone_spec: r.backbone_bytes for r in rows}
    known = [b for b in shared.values() if b is not None]
    backbone_total = sum(known) if len(known) == len(shared) else None
    fulls = [r.full_finetune_bytes for r in rows]
    full_total = sum(f for f in fulls if f is not None) if None not in fulls else None
    with_adapters = None if backbone_total is None else backbone_total + used
    totals = StorageTotals(
        tasks=len(rows),
        versions=sum(1 for r in rows for v in r.versions if v.status != VERSION_DELETED),
        adapter_bytes=used,
        global_budget_bytes=global_budget,
        global_budget_used_pct=_pct(used, global_budget),
        backbone_bytes=backbone_total,
        with_adapters_bytes=with_adapters,
        full_finetune_bytes=full_total,
        saved_bytes=(
            None if full_total is None or with_adapters is None else full_total - with_adapters
        ),
    )
    return StorageReport(rows, totals)
