"""Store maintenance: retention (``mgr gc``), the check of every file (``mgr verify``), and the
files under the home that nothing owns.

Who owns a file under the home's managed folders:

* ``artifacts/<task>/v<N>.safetensors``: its version row (a deleted row's file is a leftover);
* ``backbones/*.safetensors``: its backbone row;
* ``runs/<task>/``: the task (its training checkpoint), while the task exists;
* ``live/backbone.safetensors``, ``live/head.safetensors``, ``live/.lock``: the deployment;
* a temporary file (``.<name>.tmp-<pid>@<host>-<rnd>``, ``.pending-<pid>@<host>-<rnd>.safetensors``,
  in any of these folders or at the top of the home): its writer, while that process runs (another
  machine's, in a shared artifact root: for a day, ``fs.FOREIGN_TEMP_TTL_S``).

Anything else there is a leftover: a file of a removed task left by a kill after ``task remove``
committed, a killed writer's temporary file, a file of a deleted version, a stray file. ``mgr gc``
removes them and ``mgr verify`` lists them. The scan runs inside a catalog write transaction,
which serialises with every writer that records a file (they write, or rename into place, in
their own write transaction before they commit), so a file is never judged between its write and
its row.

A catalog row whose path is bad (absolute, with ``..``, or leading outside the home through a
link) stops ``mgr gc`` before it changes anything: such a path is never deleted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from manager.catalog import Catalog, events, identity, tasks
from manager.catalog.models import (
    VERSION_DELETED,
    VERSION_READY,
    AdapterVersion,
    Alias,
    Backbone,
    Deployment,
    Task,
)
from manager.errors import BadInput, Corrupt, MgrError
from manager.home import Home
from manager.store.fs import Store, temp_owner, temp_writer_alive


class LiveCheck(Protocol):
    """The live files' check (``manager.switch.status.HomeStatus``), made by the caller: the
    store knows nothing of switching."""

    verified: bool | None

    def to_dict(self) -> dict[str, Any]: ...


DEFAULT_KEEP = 3

# Outcomes of a file check, as `mgr verify` prints them.
OK = "ok"
MISSING = "missing"
CORRUPT = "corrupt"
NONFINITE = "nonfinite"  # the artifact is intact but holds NaN or infinity: never applied
BAD = "bad"  # the catalog row's path is not a path under the home
LEFTOVER = "leftover"  # a deleted version's file still on disk

LIVE_FILES = ("backbone.safetensors", "head.safetensors", ".lock")


# -- what the catalog owns -----------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedFile:
    """A file the catalog records: a version's artifact or a backbone file."""

    kind: str  # "version" | "backbone"
    label: str  # "task@N" or the backbone spec
    status: str  # the version's status; "ready" for a backbone
    rel: str
    bytes: int
    sha256: str  # the artifact's sha256, or the backbone's content hash
    path: Path | None  # resolved under the home; None when the path is bad
    bad: str | None = None  # why the path is refused


@dataclass(frozen=True)
class Leftover:
    """A file under the home that no catalog row or running process owns."""

    path: str  # relative to the home (absolute when in the artifact root: `Store.shown`)
    bytes: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Inventory:
    """The catalog's files and task names, read in one transaction."""

    files: list[RecordedFile]
    task_names: set[str]

    @property
    def bad(self) -> list[RecordedFile]:
        return [f for f in self.files if f.bad is not None]


def read_inventory(s: Session, store: Store) -> Inventory:
    """Every version and backbone row's file, resolved (a bad path is kept, marked)."""
    out = []
    for v in s.scalars(select(AdapterVersion).order_by(AdapterVersion.id)):
        label = f"{v.task.name}@{v.number}"
        out.append(_recorded(store, "version", label, v.status, v.path, v.bytes, v.content_hash))
    for b in s.scalars(select(Backbone).order_by(Backbone.id)):
        ready = VERSION_READY  # a backbone row has no status: recorded means in use
        out.append(_recorded(store, "backbone", b.spec, ready, b.path, b.bytes, b.content_hash))
    names = set(s.scalars(select(Task.name)))
    return Inventory(out, names)


def _recorded(
    store: Store, kind: str, label: str, status: str, rel: str, size: int, sha: str
) -> RecordedFile:
    try:
        path, bad = store.resolve(rel), None
    except MgrError as exc:
        path, bad = None, str(exc)
    return RecordedFile(kind, label, status, rel, size, sha, path, bad)


def _walk(folder: Path, store: Store | None = None) -> Iterator[Path]:
    """Files (and links, not followed) under ``folder``, sorted, named through ``folder``.

    With ``store``, ``folder`` itself may be a link that stays within the store's roots (e.g.
    artifacts/ in a shared artifact root); one leading elsewhere is not walked.
    """
    if store is not None:
        try:
            real = store.confine(folder)
        except MgrError:
            return
    else:
        real = folder
    if not real.is_dir() or (store is None and folder.is_symlink()):
        return
    for root, dirs, files in os.walk(real):
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = sorted(d for d in dirs if d not in links)
        for name in sorted(files + links):
            yield folder / Path(root, name).relative_to(real)


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def find_leftovers(store: Store, inv: Inventory) -> list[Leftover]:
    """Files under the managed folders (and temporary files at the top) nothing owns."""
    owned = {f.path for f in inv.files if f.path is not None and f.status != VERSION_DELETED}
    deleted = {
        f.path: f.label for f in inv.files if f.path is not None and f.status == VERSION_DELETED
    }
    root = store.root
    out: list[Leftover] = []

    def add(p: Path, reason: str) -> None:
        out.append(Leftover(store.shown(p), _size(p), reason))

    def temp(p: Path) -> bool:
        """True if ``p`` is a temporary file (a dead writer's is recorded as a leftover)."""
        pid = temp_owner(p)
        if pid is None:
            return False
        if not temp_writer_alive(p):
            add(p, f"temporary file of a writer that died (pid {pid})")
        return True

    for p in _walk(store.artifacts, store):
        if temp(p):
            continue
        real = Path(os.path.realpath(p)) if not p.is_symlink() else None
        parts = p.relative_to(store.artifacts).parts
        if real is not None and real in owned:
            continue
        if real is not None and real in deleted:
            add(p, f"file of deleted version {deleted[real]}")
        elif len(parts) > 1 and parts[0] not in inv.task_names:
            add(p, f"left by removed task {parts[0]!r}")
        else:
            add(p, "no catalog row records it")
    for p in _walk(store.backbones, store):
        if temp(p):
            continue
        if p.is_symlink() or Path(os.path.realpath(p)) not in owned:
            add(p, "no backbone row records it")
    for p in _walk(store.runs, store):
        if temp(p):
            continue
        parts = p.relative_to(store.runs).parts
        if len(parts) < 2:
            add(p, "not in a task's run folder")
        elif parts[0] not in inv.task_names:
            add(p, f"left by removed task {parts[0]!r}")
    # live/.lock, and live/<hash>/{backbone,head}.safetensors of backbones the catalog records.
    bound = {f.sha256[:16] for f in inv.files if f.kind == "backbone"}
    for p in _walk(store.live, store):
        if temp(p):
            continue
        if p.parent == store.live and p.name == ".lock":
            continue
        if p.parent.parent != store.live or p.name not in LIVE_FILES:
            add(p, "not a live file")
        elif p.parent.name not in bound:
            add(p, "live file of a backbone the catalog does not record")
    for folder in (root, store.cache):
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.is_file() or p.is_symlink():
                    temp(p)
    return out


def _tidy(store: Store, inv: Inventory) -> None:
    """Remove the now empty folders of removed tasks (artifacts/<task>/, runs/<task>/)."""
    for parent in (store.artifacts, store.runs):
        if not parent.is_dir():
            continue
        for d in sorted(parent.iterdir()):
            gone = d.is_dir() and not d.is_symlink() and d.name not in inv.task_names
            if gone and not any(_walk(d)):
                store.rmtree(d)


# -- gc ------------------------------------------------------------------------------------------


@dataclass
class GcVersion:
    """A version gc deleted or kept (``reasons``: why it was kept)."""

    task: str
    version: int
    bytes: int
    path: str
    reasons: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.reasons is None:
            del d["reasons"]
        return d


@dataclass
class GcReport:
    """What ``mgr gc`` deleted (or would delete, ``dry_run``) and kept."""

    dry_run: bool
    keep: int
    deleted: list[GcVersion] = field(default_factory=list)
    kept: list[GcVersion] = field(default_factory=list)
    leftovers: list[Leftover] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    refused: str | None = None  # a dry run's: why a real gc would delete nothing

    @property
    def freed_bytes(self) -> int:
        return sum(d.bytes for d in self.deleted)

    @property
    def leftover_bytes(self) -> int:
        return sum(f.bytes for f in self.leftovers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "keep": self.keep,
            "deleted": [d.to_dict() for d in self.deleted],
            "kept": [k.to_dict() for k in self.kept],
            "leftover_files": [f.path for f in self.leftovers],
            "leftovers": [f.to_dict() for f in self.leftovers],
            "freed_bytes": self.freed_bytes,
            "leftover_bytes": self.leftover_bytes,
            "failed": self.failed,
            "refused": self.refused,
        }


@dataclass(frozen=True)
class Candidate:
    """A ready version as the retention policy sees it: plain data, read from its row."""

    id: int
    task: str
    number: int
    bytes: int
    path: str
    active: bool = False  # the task's active version


def versions_in_use(
    deployments: Iterable[tuple[int | None, int | None]], aliases: Iterable[tuple[int, str]]
) -> dict[int, str]:
    """``{version id: why it is in use}`` from every host's ``(live, pending)`` version ids and
    the ``(version id, name)`` of every alias: live wins over pending, both over an alias (the
    first alias by the order given)."""
    out: dict[int, str] = {}
    for live, pending in deployments:
        if pending is not None:
            out.setdefault(pending, "pending")
        if live is not None:
            out[live] = "live"
    for vid, name in aliases:
        out.setdefault(vid, f"alias {name}")
    return out


def select_versions(
    ready: Iterable[Candidate], in_use: Mapping[int, str], keep: int
) -> tuple[list[GcVersion], list[Candidate]]:
    """``(kept, doomed)``: which ready versions gc keeps (with why) and which it deletes; no I/O.

    Per task (in the order of ``ready``), the newest ``keep`` by number are kept, and so are the
    active version and every version ``in_use`` names; the others are doomed. ``kept`` lists each
    task's versions newest first.
    """
    by_task: dict[str, list[Candidate]] = {}
    for c in ready:
        by_task.setdefault(c.task, []).append(c)
    kept: list[GcVersion] = []
    doomed: list[Candidate] = []
    for versions in by_task.values():
        for i, c in enumerate(sorted(versions, key=lambda c: c.number, reverse=True)):
            reasons = [in_use[c.id]] if c.id in in_use else []
            if c.active:
                reasons.append("active")
            if i < keep:
                reasons.append("newest")
            if reasons:
                kept.append(GcVersion(c.task, c.number, c.bytes, c.path, reasons))
            else:
                doomed.append(c)
    return kept, doomed


def collect_garbage(
    home: Home,
    catalog: Catalog,
    keep: int = DEFAULT_KEEP,
    task: str | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Delete all but the newest ``keep`` versions of each task (or of ``task``), and every file
    under the home that nothing owns (see the module docstring).

    Always kept besides: a task's active version, versions an alias names, and every host's live
    and pending ones.
    Rows are marked deleted in one transaction and their files removed after it commits: a crash
    in between leaves files of deleted rows, which the next gc removes, never a ready row without
    its file. That transaction serialises with a switch's step (a), which re-checks that its
    target is still ready, and the live and pending versions are skipped, so a switch never loses
    the artifact it needs.
    """
    if keep < 0:
        raise BadInput(f"keep must be 0 or more, not {keep}")
    store = Store.of(home)
    rep = GcReport(dry_run, keep)
    with catalog.session() as s:
        inv = read_inventory(s, store)
        rep.refused = _refusal(s, store, inv, dry_run)
        rep.kept, doomed = select_versions(_candidates(s, task), _in_use(s), keep)
        rep.deleted = [GcVersion(c.task, c.number, c.bytes, c.path) for c in doomed]
        rep.leftovers = find_leftovers(store, inv)
        if not dry_run:
            _mark_deleted(s, doomed)
            # Nothing owns these, so they go now, while no writer can record a file.
            for f in rep.leftovers:
                _remove(store, store.root / f.path, rep.failed)
            _tidy(store, inv)
            if rep.deleted or rep.leftovers:
                events.record_event(
                    s,
                    events.GC,
                    task_name=task,
                    keep=keep,
                    deleted=[f"{d.task}@{d.version}" for d in rep.deleted],
                    freed_bytes=rep.freed_bytes,
                    leftover_files=len(rep.leftovers),
                )
    if not dry_run:  # after the commit: see the docstring
        by_rel = {f.rel: f.path for f in inv.files if f.kind == "version"}
        for c in doomed:
            _remove(store, by_rel[c.path], rep.failed)
    return rep


def _refusal(s: Session, store: Store, inv: Inventory, dry_run: bool) -> str | None:
    """Raise if gc must not delete anything; a dry run gets the reason of a foreign catalog
    instead (it lists what would go and says gc would refuse)."""
    if inv.bad:
        f = inv.bad[0]
        more = f" (and {len(inv.bad) - 1} more)" if len(inv.bad) > 1 else ""
        what = f"version {f.label}" if f.kind == "version" else f"backbone {f.label}"
        raise Corrupt(
            f"refusing to collect garbage: the catalog row of {what} is bad{more}: "
            f"{f.bad}; nothing was deleted",
            hint="see 'mgr verify'",
        )
    # The wrong catalog (an empty URL, another database) owns none of these files: its gc would
    # take the whole home for leftovers.
    try:
        identity.check_before_deleting(s, store, (f.path for f in inv.files), "collect garbage")
    except MgrError as exc:
        if not dry_run:
            raise
        return str(exc)
    return None


def _candidates(s: Session, task: str | None) -> list[Candidate]:
    """The ready versions of ``task`` (or of every task, by name)."""
    chosen = [tasks.get_task(s, task)] if task is not None else tasks.list_tasks(s)
    return [
        Candidate(v.id, t.name, v.number, v.bytes, v.path, v.id == t.active_version_id)
        for t in chosen
        for v in t.versions
        if v.status == VERSION_READY
    ]


def _in_use(s: Session) -> dict[int, str]:
    """Every host's live and pending versions (a shared catalog's other homes use them too), and
    those an alias names (pets@candidate would point at nothing)."""
    deps = s.execute(select(Deployment.version_id, Deployment.pending_version_id)).all()
    aliases = s.execute(select(Alias.version_id, Alias.name).order_by(Alias.name)).all()
    return versions_in_use([tuple(d) for d in deps], [tuple(a) for a in aliases])


def _mark_deleted(s: Session, doomed: Iterable[Candidate]) -> None:
    """The doomed rows marked deleted (history is kept), one event each."""
    for c in doomed:
        v = s.get(AdapterVersion, c.id)
        v.status = VERSION_DELETED
        events.record_event(
            s,
            events.VERSION_DELETED,
            task_name=c.task,
            version_id=c.id,
            number=c.number,
            bytes=c.bytes,
            reason="gc",
        )


def _remove(store: Store, path: Path, failed: list[str]) -> None:
    try:
        store.unlink(path)
    except (OSError, MgrError) as exc:
        failed.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")


# -- verify --------------------------------------------------------------------------------------


@dataclass
class FileCheck:
    """One recorded file against the catalog."""

    path: str
    bytes: int
    status: str
    detail: str
    task: str | None = None
    version: int | None = None
    spec: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"path": self.path, "bytes": self.bytes, "status": self.status, "detail": self.detail}
        if self.spec is not None:
            return {"spec": self.spec, **d}
        return {"task": self.task, "version": self.version, **d}


@dataclass
class VerifyReport:
    """``mgr verify``: every recorded file, the files nothing owns, the byte totals, the live
    files."""

    versions: list[FileCheck]
    backbones: list[FileCheck]
    leftovers: list[Leftover]
    catalog_bytes: int
    disk_bytes: int
    live: LiveCheck

    @property
    def untracked(self) -> list[str]:
        return [f.path for f in self.leftovers]

    @property
    def problems(self) -> int:
        return (
            sum(v.status != OK for v in self.versions)
            + sum(b.status != OK for b in self.backbones)
            + len(self.leftovers)
            + (self.catalog_bytes != self.disk_bytes)
            + (self.live.verified is False)
        )

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "problems": self.problems,
            "versions": [v.to_dict() for v in self.versions],
            "backbones": [b.to_dict() for b in self.backbones],
            "untracked": self.untracked,
            "leftovers": [f.to_dict() for f in self.leftovers],
            "totals": {"catalog_bytes": self.catalog_bytes, "disk_bytes": self.disk_bytes},
            "live": self.live.to_dict(),
        }


def verify_all(home: Home, catalog: Catalog, live: LiveCheck) -> VerifyReport:
    """Every artifact and backbone file against the catalog, and the files nothing owns; ``live``
    is the live files' check, made by the caller (``manager.switch.status.live_status``).

    The catalog's byte total (versions not deleted) must equal the bytes of the files under
    ``artifacts/``: a missing, resized, stray or leftover file is a problem.
    """
    store = Store.of(home)
    with catalog.session(write=False) as s:
        inv = read_inventory(s, store)
        leftovers = find_leftovers(store, inv)
    versions: list[FileCheck] = []
    backbones: list[FileCheck] = []
    catalog_bytes = 0
    for f in inv.files:
        if f.kind == "backbone":
            status, detail = (BAD, f.bad) if f.path is None else _check_backbone(f.path, f)
            backbones.append(FileCheck(f.rel, f.bytes, status, detail, spec=f.label))
            continue
        task, _, number = f.label.rpartition("@")
        if f.status == VERSION_DELETED:
            continue  # its file, if still there, is listed with the leftovers
        catalog_bytes += f.bytes
        status, detail = (BAD, f.bad) if f.path is None else _check_artifact(f.path, f)
        versions.append(FileCheck(f.rel, f.bytes, status, detail, task=task, version=int(number)))
    disk_bytes = 0
    for p in _walk(store.artifacts, store):
        if temp_owner(p) is not None and temp_writer_alive(p):
            continue  # a running writer's: not ours to count yet
        disk_bytes += _size(p)
    return VerifyReport(versions, backbones, leftovers, catalog_bytes, disk_bytes, live)


def compare(data: bytes, size: int, sha256: str) -> tuple[str, str]:
    """``(OK|CORRUPT, detail)``: ``data`` against a recorded size and sha256."""
    if len(data) != size:
        return CORRUPT, f"{len(data)} bytes on disk, the catalog recorded {size}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        return CORRUPT, f"sha256 {digest[:12]} on disk, the catalog recorded {sha256[:12]}"
    return OK, ""


def _check_artifact(path: Path, f: RecordedFile) -> tuple[str, str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return MISSING, f"{path} does not exist"
    except OSError as exc:
        return CORRUPT, f"cannot read {path}: {exc.strerror or exc}"
    status, detail = compare(data, f.bytes, f.sha256)
    if status != OK:
        return status, detail
    from manager.delta.delta import Delta

    try:
        bad = Delta.from_bytes(data, where=str(path)).nonfinite()
    except MgrError as exc:
        return CORRUPT, str(exc)
    if bad:
        return NONFINITE, f"NaN or infinite values in {', '.join(bad[:3])}"
    return OK, ""


def _check_backbone(path: Path, f: RecordedFile) -> tuple[str, str]:
    from manager.registry.backbones import file_content_hash

    if not path.is_file():
        return MISSING, f"{path} does not exist"
    size = path.stat().st_size
    if size != f.bytes:
        return CORRUPT, f"{size} bytes on disk, the catalog recorded {f.bytes}"
    try:
        got = file_content_hash(path)
    except Exception as exc:  # safetensors raises several kinds on a damaged file
        return CORRUPT, f"unreadable: {exc}"
    if got != f.sha256:
        return CORRUPT, f"content hash {got[:12]}, the catalog recorded {f.sha256[:12]}"
    return OK, ""
