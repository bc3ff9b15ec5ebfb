"""The live weights on disk: ``<home>/live/backbone.safetensors`` and ``head.safetensors``.

The big file is a copy of the materialised backbone made once; every switch then rewrites in
place (memory map) only the supports of the old and the new delta. The task's head, whose shape
depends on the task, lives in the small head file, replaced atomically; its metadata also names
the version whose values the big file holds. A serving process loads the two files.

Crash protocol (all steps idempotent, so finishing a crashed switch = running (b)-(d) again)::

    (a) one transaction: state='switching', pending_version_id=new (version_id stays old)
    (b) live file: restore old supports from W0, apply new; msync + fsync
    (c) head file: written atomically (temp + rename), metadata = the new version and the
        big file's size and mtime
    (d) one transaction: version_id=new, task_id, pending=NULL, state='idle', a `switched` event

`recover_locked` runs at the start of every `mgr` command that opens the catalog (see
``manager.switch.recovery``): a pending artifact that verifies rolls the switch forward, one that
does not rolls it back (W0 copied into every tensor, then the old version applied). Whenever the
values in the big file cannot be known from the catalog and the head file (the old artifact
unreadable, the head file naming another version, a pending row that was deleted), the file is
reset from W0 in full: O(backbone), rare, and always correct. A file lock (``live/.lock``) keeps
one switcher at a time; the kernel drops it when a process dies, which is how recovery knows the
switch it finds in progress is really abandoned.

Damage to the live file is found cheaply: the head file's metadata also records the big file's
``st_mtime_ns`` and size as (c) left them. A switch (even a no-op one) or a ``mgr predict`` that
finds them changed, or not recorded, does not trust the file: a switch rebuilds it from W0 (a
fresh copy, then the new delta) and says so, ``mgr predict`` refuses it, and ``mgr switch
--repair`` rebuilds on demand. The backbone file W0 is checked the same way against the catalog
(``manager.store.backbones.check_backbone_file``). All paths come from ``Store``: a live file or
folder that is a symbolic link, or a catalog path leading outside the home, is refused.

Test hook: ``MGR_SWITCH_TEST_SLOWDOWN=<seconds>`` sleeps that long after each tensor written in
(b), so a test can kill the process inside the write phase. Never set it otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

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
from manager.catalog.refs import BackboneRef, VersionRef, resolve_version
from manager.delta.apply import apply as apply_delta
from manager.delta.apply import restore as restore_delta
from manager.delta.delta import Delta
from manager.errors import MgrError
from manager.home import Home
from manager.store.backbones import checked_backbone_file
from manager.store.fs import Store, pid_alive, temp_owner
from manager.switch.artifacts import load_verified, pieces, split_head, touched_values
from manager.switch.livefile import LiveFile, layout, read_metadata

SLOWDOWN_ENV = "MGR_SWITCH_TEST_SLOWDOWN"
HEAD_FORMAT = "mgr-live-head"
UNKNOWN = "?"  # `applied_version_id` of a missing or foreign head file


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


def live_weights(store: Store) -> Path:
    """The big live file, refused if it is a symbolic link (it could lead to W0 or outside)."""
    return _not_a_link(store, "backbone.safetensors", store.live_weights)


def live_head(store: Store) -> Path:
    """The head file, refused if it is a symbolic link."""
    return _not_a_link(store, "head.safetensors", store.live_head)


def _not_a_link(store: Store, name: str, confined: Path) -> Path:
    literal = store.live / name
    if literal.is_symlink() or confined != literal:
        raise MgrError(
            f"refusing to use {literal}: it is a symbolic link (to {confined}); the live files "
            "must be plain files under the home (remove the link, then 'mgr switch --repair')"
        )
    return confined


def read_head_meta(store: Store) -> dict[str, str] | None:
    """The head file's metadata, or None if it is missing or unreadable."""
    try:
        meta = read_metadata(live_head(store))
    except (OSError, MgrError):
        return None
    return meta if meta.get("format") == HEAD_FORMAT else None


def applied_version_id(meta: dict[str, str] | None) -> int | str | None:
    """The version id whose values the big file holds per the head file (None: the backbone
    alone; `UNKNOWN` when the head file is missing or not ours)."""
    if meta is None:
        return UNKNOWN
    raw = meta.get("version_id", "")
    return int(raw) if raw.isascii() and raw.isdigit() else None


def live_problem(store: Store, base: Path, applied_id: int | None) -> str | None:
    """Why the live files cannot be trusted to hold W0 + version ``applied_id``; None if they
    can. Cheap: a few stats and headers, no tensor is read."""
    meta = read_head_meta(store)
    if meta is None:
        return "the live head file is missing or unreadable"
    if applied_version_id(meta) != applied_id:
        return "the live head file names another version than the deployment"
    weights = live_weights(store)
    if not live_matches(weights, base):
        return f"the live file {weights} is missing or not a copy of the backbone file"
    mtime, size = meta.get("live_mtime_ns", ""), meta.get("live_size", "")
    if not (mtime.isascii() and mtime.isdigit() and size.isascii() and size.isdigit()):
        return "the live head file records no size and time of the live file"
    st = weights.stat()
    if (st.st_mtime_ns, st.st_size) != (int(mtime), int(size)):
        return f"the live file {weights} was modified after the last switch"
    return None


def live_matches(live: Path, base: Path) -> bool:
    """Whether ``live`` is a copy of backbone file ``base`` by header (metadata, tensor layout)
    and size: the cheap test that it holds that backbone's tensors where W0 has them."""
    try:
        return (
            live.is_file()
            and not os.path.samefile(live, base)
            and read_metadata(live) == read_metadata(base)
            and layout(live) == layout(base)
            and live.stat().st_size == base.stat().st_size
        )
    except (OSError, MgrError):
        return False


# -- switching -----------------------------------------------------------------------------------


def switch_live(
    home: Home, catalog: Catalog, task: str | None, number: int | None, repair: bool = False
) -> SwitchReport:
    """Make ``task``'s version ``number`` (None: active; ``task=None``: none) live on disk.

    ``repair``: rebuild the live file from W0 before applying the delta, whatever it holds.
    """
    store = Store.of(home)
    with store.lock(store.live_lock_file):
        return switch_live_locked(store, catalog, task, number, repair=repair)


def repair_live(home: Home, catalog: Catalog) -> SwitchReport:
    """Rebuild the live files from W0 for the version the deployment serves now."""
    store = Store.of(home)
    with store.lock(store.live_lock_file):
        recover_locked(store, catalog)
        with catalog.session(write=False) as s:
            dep = get_deployment(s, catalog.home.host)
            live = VersionRef.of(dep.version) if dep.version is not None else None
        task, number = (live.task, live.number) if live is not None else (None, None)
        return switch_live_locked(store, catalog, task, number, repair=True)


def switch_live_locked(
    store: Store,
    catalog: Catalog,
    task: str | None,
    number: int | None,
    repair: bool = False,
) -> SwitchReport:
    """`switch_live` for a caller that holds the live lock (``store.live_lock_file``)."""
    t0 = time.perf_counter()
    recover_locked(store, catalog)
    with catalog.session(write=False) as s:
        dep = get_deployment(s, catalog.home.host)
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
    base_path = checked_backbone_file(store, catalog, backbone)
    live_weights(store), live_head(store)  # refused early if either is a link
    rebuild = repair or (live_backbone is not None and live_backbone.id != backbone.id)
    if repair:
        report.notes.append("repair asked for: rebuilt the live file from W0")
    elif live_backbone is not None and not rebuild:
        problem = live_problem(store, base_path, old.id if old is not None else None)
        if problem is None and target == old:
            report.changed = False
            report.seconds = time.perf_counter() - t0
            return report
        if problem is not None:
            rebuild = True
            report.notes.append(f"{problem}: rebuilt it from W0")
    new = _verified(store, target, backbone, base_path) if target is not None else None
    # (a) the intent, in one transaction; the target must still be ready (gc may run).
    with catalog.session() as s:
        if target is not None:
            row = s.get(AdapterVersion, target.id)
            if row is None or row.status != VERSION_READY:
                raise MgrError(f"{target.label} was deleted meanwhile")
        dep = get_deployment(s, catalog.home.host)
        dep.state = DEPLOY_SWITCHING
        dep.pending_version_id = target.id if target is not None else None
        dep.backbone_id = backbone.id
        dep.updated_at = utcnow()
    _complete(store, catalog, backbone, base_path, old, target, new, report, rebuild=rebuild)
    report.seconds = time.perf_counter() - t0
    return report


def _verified(store: Store, ref: VersionRef, backbone: BackboneRef, base_path: Path) -> Delta:
    shapes = {n: e[1] for n, e in layout(base_path).items()}
    return load_verified(store, ref, backbone.spec, backbone.content_hash, shapes)


def _complete(
    store: Store,
    catalog: Catalog,
    backbone: BackboneRef,
    base_path: Path,
    old: VersionRef | None,
    target: VersionRef | None,
    new: Delta | None,
    report: SwitchReport,
    force_full: bool = False,
    rebuild: bool = False,
) -> None:
    """Steps (b)-(d): write the live files, then record the switch as done.

    ``force_full`` resets every tensor from W0 in place; ``rebuild`` replaces the whole file by
    a fresh copy of W0 (header and all) before the new delta is applied.
    """
    slow = float(os.environ.get(SLOWDOWN_ENV) or 0)
    base = LiveFile(base_path, readonly=True)
    try:
        dtype = next(iter(base.tensors.values())).dtype if base.tensors else torch.float32
        fresh = _ensure_live_file(store, base, force=rebuild)
        if fresh:  # say so in the head file, so a crash from here on is not an unknown state
            _write_head(store, backbone, None, {}, dtype)
        live = LiveFile(live_weights(store), store=store)
        try:
            # (b) restore the old supports, or all of W0 when what the file holds is unknown.
            old_body = None
            full = force_full and not fresh
            if not fresh and not full:
                allowed = {old.id if old else None, target.id if target else None}
                if applied_version_id(read_head_meta(store)) not in allowed:
                    full = True
                    report.notes.append(
                        "head file missing or naming another version: reset from W0"
                    )
                elif old is not None:
                    try:
                        body = split_head(_verified(store, old, backbone, base_path), base.tensors)
                        old_body = body[0]
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
    _write_head(store, backbone, target, head, dtype)
    # (d) done.
    report.full_restore = full or rebuild
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
        dep = get_deployment(s, catalog.home.host)
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
            host=catalog.home.host,
            to=target.label if target is not None else None,
            previous=old.label if old is not None else None,
            values_written=report.values_written,
            values_total=total,
            recovered=report.recovered,
            rolled_back=report.rolled_back,
            full_restore=report.full_restore,
        )


def _pace(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _ensure_live_file(store: Store, base: LiveFile, force: bool = False) -> bool:
    """Create (or replace a wrong) live file by copying W0; True if it is fresh W0 now."""
    weights = live_weights(store)
    if not force and live_matches(weights, base.path):
        return False
    if force:
        # Until the copy is in place the file is what it was (maybe damaged outside any
        # support): with no head file, a crash from here makes recovery reset every tensor.
        store.unlink(live_head(store))
    store.copy(base.path, weights, what="the live weights")
    return True


def _write_head(
    store: Store,
    backbone: BackboneRef,
    target: VersionRef | None,
    head: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> None:
    from safetensors.torch import save

    st = live_weights(store).stat()  # what (b) left: a later change to the file shows here
    meta = {
        "format": HEAD_FORMAT,
        "backbone_hash": backbone.content_hash,
        "backbone_spec": backbone.spec,
        "task": target.task if target else "",
        "version": str(target.number) if target else "",
        "version_id": str(target.id) if target else "",
        "artifact_sha256": target.content_hash if target else "",
        "num_classes": str(target.num_classes) if target else "0",
        "live_mtime_ns": str(st.st_mtime_ns),
        "live_size": str(st.st_size),
    }
    tensors = {n: t.to(dtype).contiguous() for n, t in head.items()}
    store.write_bytes(live_head(store), save(tensors, metadata=meta), what="the live head")


# -- recovery ------------------------------------------------------------------------------------


def recover_locked(store: Store, catalog: Catalog) -> SwitchReport | None:
    """Finish or roll back an interrupted switch; the caller holds the live lock. None if idle."""
    with catalog.session(write=False) as s:
        dep = get_deployment(s, catalog.home.host)
        if dep.state != DEPLOY_SWITCHING:
            return None
        old = VersionRef.of(dep.version) if dep.version is not None else None
        target = VersionRef.of(dep.pending_version) if dep.pending_version is not None else None
        if dep.backbone is None:
            raise MgrError("an interrupted switch has no backbone recorded; cannot recover it")
        backbone = BackboneRef.of(dep.backbone)
    for tmp in store.live.glob(".*"):  # from atomic writes cut short by the crash
        pid = temp_owner(tmp)
        if pid is not None and not pid_alive(pid):
            store.unlink(tmp)
    base_path = checked_backbone_file(store, catalog, backbone)
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
            new = _verified(store, target, backbone, base_path)
        except MgrError as exc:
            # Roll back: the old version (if it still verifies), over a full reset from W0.
            report.rolled_back = True
            report.notes.append(f"pending {target.label} unusable: {exc}")
            back, delta = old, None
            if old is not None:
                try:
                    delta = _verified(store, old, backbone, base_path)
                except MgrError as exc2:
                    report.notes.append(f"old {old.label} unusable too: {exc2}")
                    back = None
            report.task = back.task if back else None
            report.version = back.number if back else None
            _complete(
                store, catalog, backbone, base_path, None, back, delta, report, force_full=True
            )
            return report
    # Roll forward. A pending row of NULL is a switch to the backbone alone, or a pending version
    # whose task was removed meanwhile: the file's values are then not known, so reset it fully.
    _complete(
        store, catalog, backbone, base_path, old, target, new, report, force_full=target is None
    )
    return report


def recover(home: Home, catalog: Catalog) -> SwitchReport | None:
    """Take the live lock and finish or roll back an interrupted switch (None if idle)."""
    store = Store.of(home)
    with store.lock(store.live_lock_file):
        return recover_locked(store, catalog)
