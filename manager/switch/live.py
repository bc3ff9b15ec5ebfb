"""The live weights on disk: per bound backbone, ``<home>/live/<hash>/backbone.safetensors`` and
``head.safetensors`` (``<hash>``: the first 16 hex digits of the backbone's content hash).

Each backbone's live folder has its own deployment row (``(host, backbone)``) and its own crash
protocol, below; a switch to a task on a backbone with no live folder yet loads that backbone
(a copy of W0, O(backbone)), then applies the delta as usual. One lock (``live/.lock``) keeps one
switcher at a time in the whole home. Homes from before this layout had one folder (``live/``
itself): `migrate_single_live_locked` moves its two files into ``live/<hash>/`` on first open.

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

What (b)-(d) write is decided first, with no write, by `manager.switch.plan.plan` from what the
folder holds (`LiveState`: the file's header, the head file's version, the old artifact's fate);
`_complete` then carries the plan out in this order.

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
(``manager.registry.backbones.check_backbone_file``). All paths come from ``Store``: a live file or
folder that is a symbolic link, or a catalog path leading outside the home, is refused.

Test hook: ``MGR_SWITCH_TEST_SLOWDOWN=<seconds>`` sleeps that long after each tensor written in
(b), so a test can kill the process inside the write phase. Never set it otherwise.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from sqlalchemy import select

from manager.catalog import Catalog
from manager.catalog.deployment import get_deployment, host_deployments
from manager.catalog.events import SWITCHED, record_event
from manager.catalog.models import (
    DEPLOY_IDLE,
    DEPLOY_SWITCHING,
    VERSION_READY,
    AdapterVersion,
    Backbone,
    Deployment,
    utcnow,
)
from manager.catalog.refs import BackboneRef, VersionRef, resolve_version
from manager.delta.apply import apply as apply_delta
from manager.delta.apply import restore as restore_delta
from manager.delta.delta import Delta
from manager.errors import MgrError
from manager.home import Home
from manager.registry.backbones import checked_backbone_file
from manager.store.fs import Store, pid_alive, temp_owner
from manager.switch.artifacts import load_verified, pieces, split_head, touched_values
from manager.switch.livecheck import (  # the cheap checks live once, torch-free (issue 20)
    HEAD_FORMAT,
    LIVE_NAMES,
    applied_version_id,
    legacy_live_present,
    live_head,
    live_matches,
    live_problem,
    live_weights,
    not_a_link,
    raise_link,
    read_head_meta,
)
from manager.switch.livefile import LiveFile, layout, read_metadata
from manager.switch.plan import LivePlan, LiveState, plan

SLOWDOWN_ENV = "MGR_SWITCH_TEST_SLOWDOWN"


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
    backbone: str | None = None  # the spec whose live folder the switch wrote
    backbone_hash: str | None = None
    loaded: bool = False  # the backbone had no live file: a fresh copy of W0 was made

    def to_dict(self) -> dict:
        return asdict(self)


# -- switching -----------------------------------------------------------------------------------


def switch_live(
    home: Home, catalog: Catalog, task: str | None, number: int | None, repair: bool = False
) -> SwitchReport:
    """Make ``task``'s version ``number`` (None: its champion) live on disk, on the task's own
    backbone (loaded first when it has no live file). ``task=None``: every live backbone back to
    the backbone alone (one report: the last; see `switch_none` for each).

    ``repair``: rebuild the live file from W0 before applying the delta, whatever it holds.
    """
    store = Store.of(home)
    with store.lock(store.live_lock_file):
        if task is None:
            reports = switch_none_locked(store, catalog)
            return reports[-1] if reports else SwitchReport(None, None, changed=False)
        return switch_live_locked(store, catalog, task, number, repair=repair)


def switch_none(home: Home, catalog: Catalog, backbone: str | None = None) -> list[SwitchReport]:
    """Every live backbone (or the one ``backbone`` names: spec or hash prefix) back to the
    backbone alone; one report per backbone."""
    store = Store.of(home)
    with store.lock(store.live_lock_file):
        return switch_none_locked(store, catalog, backbone)


def switch_none_locked(
    store: Store, catalog: Catalog, backbone: str | None = None
) -> list[SwitchReport]:
    """`switch_none` for a caller that holds the live lock."""
    migrate_single_live_locked(store, catalog)
    recover_locked(store, catalog)
    ids = live_backbone_ids(catalog, backbone)
    return [switch_live_locked(store, catalog, None, None, backbone_id=i) for i in ids]


def live_backbone_ids(catalog: Catalog, backbone: str | None = None) -> list[int]:
    """The ids of this host's backbones with a deployment row, or of the one ``backbone``
    names (its spec, or a prefix of its content hash); MgrError if it names none."""
    with catalog.session(write=False) as s:
        rows = [(d.backbone_id, d.backbone) for d in host_deployments(s, catalog.home.host)]
        if backbone is None:
            return [i for i, _ in rows]
        hits = [
            i
            for i, b in rows
            if b is not None and (b.spec == backbone or b.content_hash.startswith(backbone))
        ]
        if not hits:
            known = ", ".join(f"{b.spec} ({b.content_hash[:12]})" for _, b in rows if b) or "none"
            raise MgrError(f"no live backbone matches {backbone!r} (live: {known})")
        return hits


def clear_task_locked(store: Store, catalog: Catalog, task_id: int) -> list[SwitchReport]:
    """Every backbone serving (or switching to) the task back to the backbone alone; the caller
    holds the live lock. Used before a task is removed."""
    migrate_single_live_locked(store, catalog)
    recover_locked(store, catalog)
    with catalog.session(write=False) as s:
        ids = [
            d.backbone_id
            for d in host_deployments(s, catalog.home.host)
            if d.task_id == task_id
            or (d.pending_version is not None and d.pending_version.task_id == task_id)
        ]
    return [switch_live_locked(store, catalog, None, None, backbone_id=i) for i in ids]


def repair_live(home: Home, catalog: Catalog) -> SwitchReport:
    """Rebuild every backbone's live files from W0 for the version it serves now (the report
    of the last; see `repair_all` for each)."""
    reports = repair_all(home, catalog)
    return reports[-1] if reports else SwitchReport(None, None, changed=False)


def repair_all(home: Home, catalog: Catalog) -> list[SwitchReport]:
    """`repair_live` for every live backbone: one report per backbone."""
    store = Store.of(home)
    with store.lock(store.live_lock_file):
        migrate_single_live_locked(store, catalog)
        recover_locked(store, catalog)
        with catalog.session(write=False) as s:
            live = [
                (d.backbone_id, VersionRef.of(d.version) if d.version is not None else None)
                for d in host_deployments(s, catalog.home.host)
            ]
        out = []
        for bb_id, ref in live:
            task, number = (ref.task, ref.number) if ref is not None else (None, None)
            out.append(
                switch_live_locked(store, catalog, task, number, repair=True, backbone_id=bb_id)
            )
        return out


def switch_live_locked(
    store: Store,
    catalog: Catalog,
    task: str | None,
    number: int | None,
    repair: bool = False,
    backbone_id: int | None = None,
) -> SwitchReport:
    """`switch_live` for a caller that holds the live lock (``store.live_lock_file``).

    ``task=None`` puts backbone ``backbone_id``'s live files back to the backbone alone.
    """
    t0 = time.perf_counter()
    migrate_single_live_locked(store, catalog)
    recover_locked(store, catalog)
    with catalog.session(write=False) as s:
        target = resolve_version(s, task, number) if task is not None else None
        bb_id = target.backbone_id if target is not None else backbone_id
        row = s.get(Backbone, bb_id) if bb_id is not None else None
        backbone = BackboneRef.of(row) if row is not None else None
        dep = get_deployment(s, catalog.home.host, bb_id) if bb_id is not None else None
        if dep is not None and dep.state != DEPLOY_IDLE:
            raise MgrError(
                "an interrupted switch could not be finished; see the live status",
                hint="see 'mgr status'",
            )
        old = VersionRef.of(dep.version) if dep is not None and dep.version is not None else None
    report = SwitchReport(
        target.task if target else None,
        target.number if target else None,
        old.task if old else None,
        old.number if old else None,
    )
    if backbone is None:  # never switched, asked for the backbone alone: nothing to do
        report.changed = False
        return report
    report.backbone, report.backbone_hash = backbone.spec, backbone.content_hash
    digest = backbone.content_hash
    base_path = checked_backbone_file(store, catalog, backbone)
    live_weights(store, digest), live_head(store, digest)  # refused early if either is a link
    rebuild = repair
    if repair:
        report.notes.append("repair asked for: rebuilt the live file from W0")
    elif live_weights(store, digest).exists():
        problem = live_problem(store, base_path, old.id if old is not None else None, digest)
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
        dep = get_deployment(s, catalog.home.host, backbone.id)
        dep.state = DEPLOY_SWITCHING
        dep.pending_version_id = target.id if target is not None else None
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
    """Steps (b)-(d) on ``backbone``'s live folder: `plan` what the files must become, write
    them, then record the switch as done.

    ``force_full`` resets every tensor from W0 in place; ``rebuild`` replaces the whole file by
    a fresh copy of W0 (header and all) before the new delta is applied.
    """
    base = LiveFile(base_path, readonly=True)
    try:
        dtype = next(iter(base.tensors.values())).dtype if base.tensors else torch.float32
        body, head = split_head(new, base.tensors) if new is not None else (None, {})
        state = _read_state(store, backbone, base, old, target, body, force_full, rebuild)
        todo, old_body = _plan_with_old(store, backbone, base, old, state)
        _write_live(store, backbone, base, todo, old_body, body, dtype)  # (b)
    finally:
        base.close()
    # (c) the head, atomically; its metadata says which version the big file now holds.
    _write_head(store, backbone, target, head, dtype)
    report.notes.extend(todo.notes)
    report.loaded = todo.loaded
    report.full_restore = todo.full_restore
    report.values_total = state.total
    report.values_written = todo.values_written
    _record_switch(catalog, backbone, old, target, report)  # (d)


def _read_state(
    store: Store,
    backbone: BackboneRef,
    base: LiveFile,
    old: VersionRef | None,
    target: VersionRef | None,
    body: Delta | None,
    force_full: bool,
    rebuild: bool,
) -> LiveState:
    """What the live folder holds now (headers and stats, no tensor read): `plan`'s input."""
    digest = backbone.content_hash
    return LiveState(
        old_id=old.id if old is not None else None,
        target_id=target.id if target is not None else None,
        file_matches=live_matches(live_weights(store, digest), base.path),
        applied=applied_version_id(read_head_meta(store, digest)),
        rebuild=rebuild,
        force_full=force_full,
        new_values=touched_values(body) if body is not None else 0,
        total=sum(t.numel() for t in base.tensors.values()),
    )


def _plan_with_old(
    store: Store, backbone: BackboneRef, base: LiveFile, old: VersionRef | None, state: LiveState
) -> tuple[LivePlan, Delta | None]:
    """`plan` for ``state``, and the old version's body when the plan restores its supports
    (read only then; an artifact that does not verify makes the plan a reset from W0)."""
    todo = plan(state)
    if not todo.restore_old or old is None:
        return todo, None
    try:
        old_body = split_head(_verified(store, old, backbone, base.path), base.tensors)[0]
    except MgrError as exc:
        return plan(replace(state, old_error=str(exc))), None
    return plan(replace(state, old_values=touched_values(old_body))), old_body


def _write_live(
    store: Store,
    backbone: BackboneRef,
    base: LiveFile,
    todo: LivePlan,
    old_body: Delta | None,
    body: Delta | None,
    dtype: torch.dtype,
) -> None:
    """Step (b) as planned: the big file's values, then msync + fsync."""
    digest = backbone.content_hash
    if todo.copy_w0:
        # Until the copy is in place the file is what it was (maybe damaged outside any support):
        # with no head file, a crash from here makes recovery reset every tensor.
        store.unlink(live_head(store, digest))
        store.copy(base.path, live_weights(store, digest), what="the live weights")
        # Say so in the head file, so a crash from here on is not an unknown state.
        _write_head(store, backbone, None, {}, dtype)
    slow = float(os.environ.get(SLOWDOWN_ENV) or 0)
    live = LiveFile(live_weights(store, digest), store=store)
    try:
        with torch.no_grad():
            if todo.reset_all:
                for n, t in live.tensors.items():
                    t.copy_(base.tensors[n])
            for piece in pieces(old_body) if todo.restore_old and old_body is not None else []:
                restore_delta(live.tensors, base.tensors, piece)
                _pace(slow)
            for piece in pieces(body) if todo.apply_new and body is not None else []:
                apply_delta(live.tensors, base.tensors, piece)
                _pace(slow)
        live.flush()
    finally:
        live.close()


def _record_switch(
    catalog: Catalog,
    backbone: BackboneRef,
    old: VersionRef | None,
    target: VersionRef | None,
    report: SwitchReport,
) -> None:
    """Step (d): the deployment row names the target and is idle again; a `switched` event."""
    with catalog.session() as s:
        if target is not None and s.get(AdapterVersion, target.id) is None:
            # Its task was removed (--force) meanwhile; the row stays 'switching' with pending
            # NULL, which the next command's recovery resets to the backbone alone.
            raise MgrError(f"{target.label} was removed during the switch", hint="run 'mgr status'")
        dep = get_deployment(s, catalog.home.host, backbone.id)
        dep.version_id = target.id if target is not None else None
        dep.task_id = target.task_id if target is not None else None
        dep.pending_version_id = None
        dep.state = DEPLOY_IDLE
        dep.updated_at = utcnow()
        record_event(
            s,
            SWITCHED,
            task_name=target.task if target is not None else None,
            version_id=target.id if target is not None else None,
            host=catalog.home.host,
            to=target.label if target is not None else None,
            previous=old.label if old is not None else None,
            backbone=backbone.spec,
            backbone_hash=backbone.content_hash[:16],
            values_written=report.values_written,
            values_total=report.values_total,
            recovered=report.recovered,
            rolled_back=report.rolled_back,
            full_restore=report.full_restore,
        )


def _pace(seconds: float) -> None:
    if seconds > 0:
        time.sleep(seconds)


def _write_head(
    store: Store,
    backbone: BackboneRef,
    target: VersionRef | None,
    head: dict[str, torch.Tensor],
    dtype: torch.dtype,
) -> None:
    from safetensors.torch import save

    digest = backbone.content_hash
    st = live_weights(store, digest).stat()  # what (b) left: a later change to the file shows
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
    store.write_bytes(live_head(store, digest), save(tensors, metadata=meta), what="the live head")


# -- the single live folder of older homes -------------------------------------------------------


def migrate_single_live(home: Home, catalog: Catalog) -> bool:
    """Take the live lock and move the pre-0005 live files if any (see the locked variant)."""
    store = Store.of(home)
    if not legacy_live_present(store):
        return False
    with store.lock(store.live_lock_file):
        return migrate_single_live_locked(store, catalog)


def migrate_single_live_locked(store: Store, catalog: Catalog) -> bool:
    """Move ``live/backbone.safetensors`` and ``live/head.safetensors`` (a home from before live
    folders per backbone) into ``live/<hash>/``; True if anything moved.

    The backbone is the one the head file names, else the one the host's deployment row names.
    Each file is renamed only if its destination is missing, the big file first: a crash between
    the two renames leaves the head for the next command to move, and a head file missing
    meanwhile is an unknown state that the switch protocol already resets from W0.
    """
    if not legacy_live_present(store):
        return False
    old_w, old_h = (
        _not_a_legacy_link(store, LIVE_NAMES[0]),
        _not_a_legacy_link(store, LIVE_NAMES[1]),
    )
    meta = None
    try:
        meta = read_metadata(old_h) if old_h.exists() else None
    except (OSError, MgrError):
        meta = None
    meta = meta if meta is not None and meta.get("format") == HEAD_FORMAT else {}
    digest = meta.get("backbone_hash")
    with catalog.session(write=False) as s:
        known = {b.content_hash for b in s.scalars(select(Backbone))}
        if digest not in known:
            rows = [d for d in host_deployments(s, catalog.home.host) if d.backbone is not None]
            digest = rows[0].backbone.content_hash if len(rows) == 1 else None
    if digest is None:
        return False  # no backbone to give them: left for 'mgr gc' to report
    store.mkdir(store.live_dir(digest))
    moved = False
    for src, name in zip((old_w, old_h), LIVE_NAMES, strict=True):
        dest = not_a_link(store, digest, name)
        if src.exists() and not dest.exists():
            store.replace(src, dest)
            moved = True
        elif src.exists():  # the move had already happened; what is left is stale
            store.unlink(src)
    return moved


def _not_a_legacy_link(store: Store, name: str) -> Path:
    literal = store.live / name
    confined = store.confine(literal)
    if literal.is_symlink() or confined != literal:
        raise_link(literal, confined)
    return confined


# -- recovery ------------------------------------------------------------------------------------


def recover_locked(store: Store, catalog: Catalog) -> SwitchReport | None:
    """Finish or roll back every interrupted switch of this host (one per backbone at most);
    the caller holds the live lock. Returns the last report, None if all were idle."""
    migrate_single_live_locked(store, catalog)
    with catalog.session(write=False) as s:
        ids = [d.id for d in host_deployments(s, catalog.home.host) if d.state == DEPLOY_SWITCHING]
        orphan = [
            d.id
            for d in s.scalars(
                select(Deployment).where(
                    Deployment.host == catalog.home.host,
                    Deployment.backbone_id.is_(None),
                    Deployment.state == DEPLOY_SWITCHING,
                )
            )
        ]
    if orphan:
        raise MgrError("an interrupted switch has no backbone recorded; cannot recover it")
    report = None
    for dep_id in ids:
        report = _recover_one(store, catalog, dep_id)
    return report


def _recover_one(store: Store, catalog: Catalog, dep_id: int) -> SwitchReport | None:
    with catalog.session(write=False) as s:
        dep = s.get(Deployment, dep_id)
        if dep is None or dep.state != DEPLOY_SWITCHING:
            return None
        old = VersionRef.of(dep.version) if dep.version is not None else None
        target = VersionRef.of(dep.pending_version) if dep.pending_version is not None else None
        backbone = BackboneRef.of(dep.backbone)
    folder = store.live_dir(backbone.content_hash)
    for where in (store.live, folder):  # temporary files from atomic writes cut short
        for tmp in where.glob(".*") if where.is_dir() else []:
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
        backbone=backbone.spec,
        backbone_hash=backbone.content_hash,
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
    """Take the live lock and finish or roll back every interrupted switch (None if idle)."""
    store = Store.of(home)
    with store.lock(store.live_lock_file):
        return recover_locked(store, catalog)
