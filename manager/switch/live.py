"""The live weights on disk: ``<home>/live/backbone.safetensors`` and ``head.safetensors``.

The big file is a copy of the materialised backbone made once; every switch then rewrites in
place (memory map) only the supports of the old and the new delta. The task's head, whose shape
depends on the task, lives in the small head file, replaced atomically; its metadata also names
the version whose values the big file holds. A serving process loads the two files.

Crash protocol (all steps idempotent, so finishing a crashed switch = running (b)-(d) again)::

    (a) one transaction: state='switching', pending_version_id=new (version_id stays old)
    (b) live file: restore old supports from W0, apply new; msync + fsync
    (c) head file: written atomically (temp + rename), metadata = the new version
    (d) one transaction: version_id=new, task_id, pending=NULL, state='idle', a `switched` event

`recover_locked` runs at the start of every `mgr` command that opens the catalog (see
``manager.switch.recovery``): a pending artifact that verifies rolls the switch forward, one that
does not rolls it back (W0 copied into every tensor, then the old version applied). Whenever the
values in the big file cannot be known from the catalog and the head file (the old artifact
unreadable, the head file naming another version, a pending row that was deleted), the file is
reset from W0 in full: O(backbone), rare, and always correct. A file lock (``live/.lock``) keeps
one switcher at a time; the kernel drops it when a process dies, which is how recovery knows the
switch it finds in progress is really abandoned.

Test hook: ``MGR_SWITCH_TEST_SLOWDOWN=<seconds>`` sleeps that long after each tensor written in
(b), so a test can kill the process inside the write phase. Never set it otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from manager.atomic import atomic_path
from manager.catalog import Catalog
from manager.catalog.deployment import get_deployment
from manager.catalog.events import SWITCHED, record_event
from manager.catalog.models import (
    DEPLOY_IDLE,
    DEPLOY_SWITCHING,
    VERSION_READY,
    AdapterVersion,
    Backbone,
    utcnow,
)
from manager.delta.apply import apply as apply_delta
from manager.delta.apply import restore as restore_delta
from manager.delta.delta import Delta
from manager.errors import MgrError
from manager.home import Home
from manager.switch.artifacts import VersionRef, load_verified, pieces, split_head, touched_values
from manager.switch.livefile import LiveFile, layout, read_metadata
from manager.switch.switcher import BackboneRef, resolve_version

SLOWDOWN_ENV = "MGR_SWITCH_TEST_SLOWDOWN"
HEAD_FORMAT = "mgr-live-head"


@dataclass(frozen=True)
class LivePaths:
    """Where the live files of a home are."""

    root: Path

    @classmethod
    def of(cls, home: Home) -> LivePaths:
        return cls(home.root / "live")

    @property
    def weights(self) -> Path:
        return self.root / "backbone.safetensors"

    @property
    def head(self) -> Path:
        return self.root / "head.safetensors"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


@contextlib.contextmanager
def live_lock(home: Home, shared: bool = False) -> Iterator[None]:
    """Exclusive (switching) or shared (reading) lock on the live files; dropped if we die."""
    path = LivePaths.of(home).lock
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@dataclass
class SwitchReport:
    """What a switch (or a recovery) did."""

    task: str | None
    version: int | None
    previous_task: str | None = None
    previous_version: int | None = None
    changed: bool = True
    seconds: float = 0.0
    values_written: int = 0
    values_total: int = 0
    recovered: bool = False
    rolled_back: bool = False
    full_restore: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def read_head_meta(home: Home) -> dict[str, str] | None:
    """The head file's metadata, or None if it is missing or unreadable."""
    path = LivePaths.of(home).head
    try:
        meta = read_metadata(path)
    except (OSError, MgrError):
        return None
    return meta if meta.get("format") == HEAD_FORMAT else None


def _applied_id(meta: dict[str, str] | None) -> int | str | None:
    """The version id whose values the big file holds per the head file; "?" if unknown."""
    if meta is None:
        return "?"
    raw = meta.get("version_id", "")
    return int(raw) if raw.isdigit() else None


# -- switching -----------------------------------------------------------------------------------


def switch_live(home: Home, catalog: Catalog, task: str | None, number: int | None) -> SwitchReport:
    """Make ``task``'s version ``number`` (None: active; ``task=None``: none) live on disk."""
    t0 = time.perf_counter()
    with live_lock(home):
        recover_locked(home, catalog)
        with catalog.session(write=False) as s:
            dep = get_deployment(s)
            if dep.state != DEPLOY_IDLE:
                raise MgrError("an interrupted switch could not be finished; see 'mgr status'")
            target = resolve_version(s, task, number) if task is not None else None
            old = VersionRef.of(dep.version) if dep.version is not None else None
            bb_id = target.backbone_id if target is not None else dep.backbone_id
            row = s.get(Backbone, bb_id) if bb_id is not None else None
            backbone = BackboneRef.of(row) if row is not None else None
            live_backbone = BackboneRef.of(dep.backbone) if dep.backbone is not None else None
        report = SwitchReport(
            target.task if target else None,
            target.number if target else None,
            old.task if old else None,
            old.number if old else None,
        )
        if backbone is None:  # never switched, asked for the backbone alone: nothing to do
            report.changed = False
            return report
        if live_backbone is not None and live_backbone.id != backbone.id and old is not None:
            raise MgrError(
                f"task {target.task!r} is bound to backbone {backbone.spec} (weights "
                f"{backbone.content_hash[:12]}), but the live file holds "
                f"{live_backbone.spec} (weights {live_backbone.content_hash[:12]}) with "
                f"{old.label} live; all tasks served from one live file share its backbone "
                "('mgr switch --none' first to rebuild it for another backbone)"
            )
        if target == old and _consistent(home, backbone, old):
            report.changed = False
            report.seconds = time.perf_counter() - t0
            return report
        new = _verified(home, target, backbone) if target is not None else None
        # (a) the intent, in one transaction; the target must still be ready (gc may run).
        with catalog.session() as s:
            if target is not None:
                row = s.get(AdapterVersion, target.id)
                if row is None or row.status != VERSION_READY:
                    raise MgrError(f"{target.label} was deleted meanwhile")
            dep = get_deployment(s)
            dep.state = DEPLOY_SWITCHING
            dep.pending_version_id = target.id if target is not None else None
            dep.backbone_id = backbone.id
            dep.updated_at = utcnow()
        _complete(home, catalog, backbone, old, target, new, report)
        report.seconds = time.perf_counter() - t0
        return report


def _verified(home: Home, ref: VersionRef, backbone: BackboneRef) -> Delta:
    shapes = {n: e[1] for n, e in layout(home.abs(backbone.path)).items()}
    return load_verified(home, ref, backbone.spec, backbone.content_hash, shapes)


def _consistent(home: Home, backbone: BackboneRef, applied: VersionRef | None) -> bool:
    """Cheap check that the live files are what the catalog says (for a no-op switch)."""
    expected = applied.id if applied is not None else None
    return _applied_id(read_head_meta(home)) == expected and live_matches(
        LivePaths.of(home).weights, home.abs(backbone.path)
    )


def live_matches(live: Path, base: Path) -> bool:
    """Whether ``live`` is a copy of backbone file ``base`` by header (metadata, tensor layout)
    and size: the cheap test that it holds that backbone's tensors where W0 has them."""
    try:
        return (
            live.is_file()
            and read_metadata(live) == read_metadata(base)
            and layout(live) == layout(base)
            and live.stat().st_size == base.stat().st_size
        )
    except (OSError, MgrError):
        return False


def _complete(
    home: Home,
    catalog: Catalog,
    backbone: BackboneRef,
    old: VersionRef | None,
    target: VersionRef | None,
    new: Delta | None,
    report: SwitchReport,
    force_full: bool = False,
) -> None:
    """Steps (b)-(d): write the live files, then record the switch as done."""
    paths = LivePaths.of(home)
    slow = float(os.environ.get(SLOWDOWN_ENV) or 0)
    base = LiveFile(home.abs(backbone.path), readonly=True)
    try:
        dtype = next(iter(base.tensors.values())).dtype if base.tensors else torch.float32
        fresh = _ensure_live_file(paths, base)
        if fresh:  # say so in the head file, so a crash from here on is not an unknown state
            _write_head(paths, backbone, None, {}, dtype)
        live = LiveFile(paths.weights)
        try:
            # (b) restore the old supports, or all of W0 when what the file holds is unknown.
            old_body = None
            full = force_full and not fresh
            if not fresh and not full:
                allowed = {old.id if old else None, target.id if target else None}
                if _applied_id(read_head_meta(home)) not in allowed:
                    full = True
                    report.notes.append(
                        "head file missing or naming another version: reset from W0"
                    )
                elif old is not None:
                    try:
                        old_body = split_head(_verified(home, old, backbone), base.tensors)[0]
                    except MgrError as exc:
                        full = True
                        report.notes.append(f"old artifact unusable ({exc}): reset from W0")
            body, head = split_head(new, base.tensors) if new is not None else (None, {})
            with torch.no_grad():
                if full:
                    for n, t in live.tensors.items():
                        t.copy_(base.tensors[n])
                for piece in pieces(old_body) if old_body is not None else []:
                    restore_delta(live.tensors, base.tensors, piece)
                    _pace(slow)
                for piece in pieces(body) if body is not None else []:
                    apply_delta(live.tensors, base.tensors, piece)
                    _pace(slow)
            live.flush()
            total = sum(t.numel() for t in base.tensors.values())
        finally:
            live.close()
    finally:
        base.close()
    # (c) the head, atomically; its metadata says which version the big file now holds.
    _write_head(paths, backbone, target, head, dtype)
    # (d) done.
    report.full_restore = full
    report.values_total = total
    report.values_written = (
        total
        if full or fresh
        else sum(touched_values(d) for d in (old_body, body) if d is not None)
    )
    with catalog.session() as s:
        if target is not None and s.get(AdapterVersion, target.id) is None:
            # Its task was removed (--force) meanwhile; the row stays 'switching' with pending
            # NULL, which the next command's recovery resets to the backbone alone.
            raise MgrError(f"{target.label} was removed during the switch; run 'mgr status'")
        dep = get_deployment(s)
        dep.version_id = target.id if target is not None else None
        dep.task_id = target.task_id if target is not None else None
        dep.pending_version_id = None
        dep.state = DEPLOY_IDLE
        dep.backbone_id = backbone.id
        dep.updated_at = utcnow()
        record_event(
            s,
            SWITCHED,
            task_name=target.task if target is not None else None,
            version_id=target.id if target is not None else None,
            to=target.label if target is not None else None,
            previous=old.label if old is not None else None,
            values_written=report.values_written,
            values_total=total,
            recovered=report.recovered,
            rolled_back=report.rolled_back,
            full_restore=full,
        )


def _pace(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _ensure_live_file(paths: LivePaths, base: LiveFile) -> bool:
    """Create (or replace a wrong) live file by copying W0; True if it is fresh W0 now."""
    if live_matches(paths.weights, base.path):
        return False
    with atomic_path(paths.weights) as tmp:
        shutil.copyfile(base.path, tmp)
    return True


def _write_head(
    paths: LivePaths,
    backbone: BackboneRef,
    target: VersionRef | None,
    head: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> None:
    from safetensors.torch import save_file

    meta = {
        "format": HEAD_FORMAT,
        "backbone_hash": backbone.content_hash,
        "backbone_spec": backbone.spec,
        "task": target.task if target else "",
        "version": str(target.number) if target else "",
        "version_id": str(target.id) if target else "",
        "artifact_sha256": target.content_hash if target else "",
        "num_classes": str(target.num_classes) if target else "0",
    }
    tensors = {n: t.to(dtype).contiguous() for n, t in head.items()}
    with atomic_path(paths.head) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


# -- recovery ------------------------------------------------------------------------------------


def recover_locked(home: Home, catalog: Catalog) -> SwitchReport | None:
    """Finish or roll back an interrupted switch; the caller holds `live_lock`. None if idle."""
    with catalog.session(write=False) as s:
        dep = get_deployment(s)
        if dep.state != DEPLOY_SWITCHING:
            return None
        old = VersionRef.of(dep.version) if dep.version is not None else None
        target = VersionRef.of(dep.pending_version) if dep.pending_version is not None else None
        if dep.backbone is None:
            raise MgrError("an interrupted switch has no backbone recorded; cannot recover it")
        backbone = BackboneRef.of(dep.backbone)
    for tmp in LivePaths.of(home).root.glob(".*.tmp"):  # from atomic writes cut short
        tmp.unlink(missing_ok=True)
    report = SwitchReport(
        target.task if target else None,
        target.number if target else None,
        old.task if old else None,
        old.number if old else None,
        recovered=True,
    )
    new = None
    if target is not None:
        try:
            new = _verified(home, target, backbone)
        except MgrError as exc:
            # Roll back: the old version (if it still verifies), over a full reset from W0.
            report.rolled_back = True
            report.notes.append(f"pending {target.label} unusable: {exc}")
            back, delta = old, None
            if old is not None:
                try:
                    delta = _verified(home, old, backbone)
                except MgrError as exc2:
                    report.notes.append(f"old {old.label} unusable too: {exc2}")
                    back = None
            report.task = back.task if back else None
            report.version = back.number if back else None
            _complete(home, catalog, backbone, None, back, delta, report, force_full=True)
            return report
    # Roll forward. A pending row of NULL is a switch to the backbone alone, or a pending version
    # whose task was removed meanwhile: the file's values are then not known, so reset it fully.
    _complete(home, catalog, backbone, old, target, new, report, force_full=target is None)
    return report


def recover(home: Home, catalog: Catalog) -> SwitchReport | None:
    """Take the live lock and finish or roll back an interrupted switch (None if idle)."""
    with live_lock(home):
        return recover_locked(home, catalog)
