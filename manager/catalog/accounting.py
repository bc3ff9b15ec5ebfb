"""The storage report: bytes per task and version against the backbone, budgets, full copies."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Result, Row, Text, func, select, type_coerce
from sqlalchemy.orm import Session, aliased

from manager.catalog import budgets
from manager.catalog.models import VERSION_DELETED, AdapterVersion, Backbone, Budget, Task
from manager.catalog.paging import Page
from manager.catalog.paramcount import FLOAT32_BYTES, ParamInfo, param_info
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


class _Sizes:
    """Bytes on disk of catalog paths (None: missing, not a regular file, or outside the home).

    `Store.resolve` follows every component of a path (about 30 us); a report of 15,000 versions
    instead resolves each folder once, from its parent's real path and one ``lstat`` of its own
    name (``artifacts/`` once, each task's folder once), and looks at each file with one more
    ``lstat``. Whatever is a symlink (or an odd name) takes the full `Store.resolve`, so what is
    confined is exactly what `Store.resolve` confines.
    """

    def __init__(self, store: Store):
        self.store = store
        self.folders: dict[str, str | None] = {}

    def _folder(self, rel: str) -> str | None:
        """The real path of folder `rel`, built from its parent's (memoised) and one ``lstat``
        of its last component; a symlink or an odd component goes through `Store.resolve`."""
        if rel in self.folders:
            return self.folders[rel]
        parent_rel, _, name = rel.rpartition("/")
        real: str | None = None
        if parent_rel and name not in ("", ".", ".."):
            parent = self._folder(parent_rel)
            if parent is None:  # missing (or outside): nothing below it is on disk
                self.folders[rel] = None
                return None
            try:
                st = os.lstat(parent + "/" + name)
            except (OSError, ValueError):
                self.folders[rel] = None
                return None
            if stat.S_ISDIR(st.st_mode):
                real = parent + "/" + name
        if real is None:
            try:
                real = str(self.store.resolve(rel))
            except MgrError:  # a path outside the home is never looked at
                real = None
        self.folders[rel] = real
        return real

    def _slow(self, rel: str) -> int | None:
        try:
            path = self.store.resolve(rel)
        except MgrError:
            return None
        return path.stat().st_size if path.is_file() else None

    def size(self, rel: str) -> int | None:
        folder_rel, _, name = rel.rpartition("/")
        if not folder_rel or name in ("", ".", "..") or "\x00" in rel:
            return self._slow(rel)  # the odd ones: Store.resolve decides
        folder = self._folder(folder_rel)
        if folder is None:
            return None
        try:
            st = os.lstat(folder + "/" + name)
        except (OSError, ValueError):
            return None
        if stat.S_ISLNK(st.st_mode):
            return self._slow(rel)
        return st.st_size if stat.S_ISREG(st.st_mode) else None


class _Specs:
    """Parameter counts of backbone specs, looked up once per spec per report."""

    def __init__(self, store: Store):
        self.store = store
        self.known: dict[str, ParamInfo | None] = {}

    def info(self, spec: str) -> ParamInfo | None:
        if spec not in self.known:
            try:
                self.known[spec] = param_info(spec, self.store)
            except MgrError:
                self.known[spec] = None
        return self.known[spec]

    def backbone_bytes(self, spec: str, param_count: int | None) -> int | None:
        """A task's backbone bytes: the bound backbone's (the truth) if trained, else the spec's."""
        if param_count is not None:
            return param_count * FLOAT32_BYTES
        info = self.info(spec)
        return info.bytes if info else None

    def full_bytes(self, spec: str, backbone_bytes: int | None, num_classes: int) -> int | None:
        """A full fine-tune: a whole backbone copy plus the task's head."""
        info = self.info(spec)
        if info is None or backbone_bytes is None:
            return None
        return backbone_bytes + info.head_bytes(num_classes)


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


def _task_rows(s: Session, page: Page) -> Iterator[Row]:
    """The page's tasks with their bound backbone, active version, budget and used bytes."""
    ids = page.ids().subquery()
    active = aliased(AdapterVersion)
    # Core rows straight from the driver (the session's connection, so its transaction): the
    # ORM's result layer adds microseconds per row and nothing here needs it. Fetched in
    # batches (one fetchone per row costs more than the row).
    return _batched(
        s.connection().execute(
            select(
                Task.id,
                Task.name,
                Task.backbone_spec,
                Task.num_classes,
                Backbone.param_count,
                active.id.label("active_id"),
                active.number.label("active_number"),
                Budget.max_bytes,
                budgets.used_column(Task.id).label("used"),
            )
            .select_from(ids)
            .join(Task, Task.id == ids.c.id)
            .outerjoin(Backbone, Backbone.id == Task.backbone_id)
            .outerjoin(active, active.id == Task.active_version_id)
            .outerjoin(Budget, Budget.task_id == Task.id)
            .order_by(ids.c.name)
        )
    )


def _versions(s: Session, page: Page) -> dict[int, list[Row]]:
    """The page's versions, by task id, in number order (metrics as their JSON text)."""
    V = AdapterVersion
    # IN, not a join: the planner then probes (task_id, number) per listed task, where a join
    # may scan every version (SQLite picks that order).
    rows = s.connection().execute(
        select(
            V.task_id,
            V.id,
            V.number,
            V.method,
            V.status,
            V.bytes,
            V.path,
            type_coerce(V.metrics, Text).label("metrics"),
        )
        .where(V.task_id.in_(select(page.ids().subquery().c.id)))
        .order_by(V.task_id, V.number)
    )
    out: dict[int, list[Row]] = {}
    for r in rows.fetchall():
        out.setdefault(r[0], []).append(r)
    return out


def _batched(result: Result, size: int = 1000) -> Iterator[Row]:
    for part in result.partitions(size):
        yield from part


def _top1_text(metrics: str | dict[str, Any] | None) -> float | None:
    """`_top1` of a metrics column's JSON text (parsed only where it names a top-1), or of its
    value where the driver decoded it already (psycopg decodes JSON itself)."""
    if not isinstance(metrics, str):
        return _top1(metrics if isinstance(metrics, dict) else None)
    if '"top1"' not in metrics:
        return None
    try:
        value = json.loads(metrics)
    except ValueError:
        return None
    return _top1(value if isinstance(value, dict) else None)


def _totals(s: Session, specs: _Specs) -> StorageTotals:
    """All tasks, whatever the page: three aggregate queries."""
    V = AdapterVersion
    live = (
        select(func.count().label("n"), func.coalesce(func.sum(V.bytes), 0).label("used"))
        .where(V.status != VERSION_DELETED)
        .subquery()
    )  # one pass over the (status, bytes) index for both (count(*): PostgreSQL's index holds no id)
    n_tasks, n_versions, used, global_budget = s.execute(
        select(
            select(func.count()).select_from(Task).scalar_subquery(),
            live.c.n,
            live.c.used,
            budgets.global_max_column(),
        )
    ).one()
    used = int(used)
    # Tasks grouped by spec and bound backbone: a few rows, whatever the number of tasks.
    by_backbone = (
        select(
            Task.backbone_spec,
            Task.backbone_id,
            func.count().label("n"),
            func.sum(Task.num_classes).label("classes"),
        )
        .group_by(Task.backbone_spec, Task.backbone_id)
        .subquery()
    )  # one ordered pass over the (backbone_spec, backbone_id, num_classes) index
    groups = s.execute(
        select(
            by_backbone.c.backbone_spec,
            Backbone.param_count,
            by_backbone.c.n,
            by_backbone.c.classes,
        ).outerjoin(Backbone, Backbone.id == by_backbone.c.backbone_id)
    ).all()
    # One shared copy of each distinct backbone spec serves all of its tasks; a materialised
    # backbone, where a task is bound to one, is the truth.
    bound: dict[str, int] = {}
    full_total: int | None = 0
    for spec, param_count, count, classes in groups:
        bb = specs.backbone_bytes(spec, param_count)
        if param_count is not None:
            bound[spec] = max(bound.get(spec, 0), bb)
        info = specs.info(spec)
        if full_total is None or info is None or bb is None:
            full_total = None
        else:  # a head's bytes are linear in its classes: one sum covers the group's heads
            full_total += count * bb + info.head_bytes(int(classes))
    shared = {spec: bound.get(spec, specs.backbone_bytes(spec, None)) for spec, *_ in groups}
    known = [b for b in shared.values() if b is not None]
    backbone_total = sum(known) if len(known) == len(shared) else None
    with_adapters = None if backbone_total is None else backbone_total + used
    return StorageTotals(
        tasks=int(n_tasks),
        versions=int(n_versions),
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


def iter_storage(s: Session, home: Home, page: Page | None = None) -> Iterator[dict[str, Any]]:
    """Each task of `page` (default: all) as ``TaskStorage.to_dict()`` gives it, one at a time.

    Plain dicts built from Core rows, no object per row: ``mgr storage --json`` writes each as
    it comes. Two queries whatever the catalog's size (the page's tasks, their versions); the
    only per-row work is one ``lstat`` of each listed version's file.
    """
    page = page or Page()
    specs = _Specs(Store.of(home))
    sizes = _Sizes(specs.store)
    versions = _versions(s, page)
    for (
        task_id,
        name,
        spec,
        num_classes,
        param_count,
        active_id,
        active_number,
        budget,
        used,
    ) in _task_rows(s, page):
        backbone_bytes = specs.backbone_bytes(spec, param_count)
        listed = []
        for _, vid, number, method, status, nbytes, path, metrics in versions.get(task_id, ()):
            deleted = status == VERSION_DELETED
            on_disk = None if deleted else sizes.size(path)
            listed.append(
                {
                    "number": number,
                    "method": method,
                    "status": status,
                    "active": vid == active_id,
                    "bytes": nbytes,
                    "on_disk_bytes": on_disk,
                    "missing": not deleted and on_disk is None,
                    "pct_of_backbone": _pct(nbytes, backbone_bytes),
                    "top1": _top1_text(metrics),
                }
            )
        used = int(used)
        yield {
            "task": name,
            "backbone_spec": spec,
            "backbone_bytes": backbone_bytes,
            "active_version": active_number,
            "versions": listed,
            "used_bytes": used,
            "pct_of_backbone": _pct(used, backbone_bytes),
            "budget_bytes": budget,
            "budget_used_pct": _pct(used, budget),
            "full_finetune_bytes": specs.full_bytes(spec, backbone_bytes, num_classes),
        }


def storage_totals(s: Session, home: Home) -> StorageTotals:
    """The totals over every task, whatever the page (two aggregate queries)."""
    return _totals(s, _Specs(Store.of(home)))


def storage_report(s: Session, home: Home, page: Page | None = None) -> StorageReport:
    """Every task (or `page`'s) and its versions, and totals over all tasks against the global
    budget and full fine-tuning.

    Four queries whatever the catalog's size (the page's tasks, their versions, two for the
    totals); the only per-row work is a ``stat`` of each listed version's file.
    """
    rows = [TaskStorage.from_dict(d) for d in iter_storage(s, home, page)]
    return StorageReport(rows, storage_totals(s, home))
