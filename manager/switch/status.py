"""The check behind ``mgr status``: are the live files exactly what the catalog says?

One check per live backbone (``live/<hash>/``), against the version its deployment row says is
live (which need not be the task's champion: the report then says so in ``notes``).

"Verified" for the live files means, in full: the backbone file hashes to the catalog's content
hash; the active artifact's size and sha256 match the catalog; every tensor of the live file is
bit-identical (``torch.equal``) to a fresh merge of W0 and the active delta, computed one tensor at
a time; the head file holds exactly the delta's head and names the active version; and the live
file's size and mtime are those the last switch recorded. Without ``verify`` only the last (cheap)
part runs. The checks of every other file are in ``manager.registry.maintenance``.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any

from manager.catalog import Catalog
from manager.catalog.deployment import host_deployments
from manager.catalog.refs import VersionRef
from manager.catalog.views import iso
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store
from manager.switch.livecheck import (
    legacy_live_present,
    live_head,
    live_matches,
    live_problem,
    live_weights,
)

VERIFICATION = (
    "live weights == W0 + the live version's delta, bit for bit (every tensor, torch.equal); "
    "head file == the delta's head; backbone and artifact hashes == the catalog's"
)
QUICK_VERIFICATION = (
    "headers, sizes and times only: the live file is a copy of the backbone file's layout, "
    "unmodified since the last switch, and the head file names the live version "
    "(--verify-bits compares every tensor)"
)
# `live_status`'s modes: the full comparison; the cheap check only; the cheap check, and the
# full comparison of the backbones where it fails (what `mgr status` does by default).
BITS, QUICK, AUTO = "bits", "quick", "auto"


@dataclass
class StatusReport:
    """One live backbone: its deployment row and the state of its live files."""

    state: str
    task: str | None
    version: int | None
    version_id: int | None
    method: str | None
    pending: str | None
    backbone: dict[str, str] | None
    updated_at: str | None
    live_file: str
    head_file: str
    verified: bool | None = None
    verification: str = VERIFICATION
    problems: list[str] = field(default_factory=list)
    champion: int | None = None  # the live task's champion (active version) number
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class HomeStatus:
    """Every live backbone of this home (``to_dict``: ``mgr status --json``).

    ``task``/``version`` name the one task live when exactly one backbone serves one (what
    ``mgr predict`` without ``--task`` answers for); ``verified`` is False if any backbone's
    check failed, True if every one was checked and passed, None when nothing was checked.
    """

    backbones: list[StatusReport]
    verification: str = VERIFICATION

    @property
    def live(self) -> list[StatusReport]:
        return [b for b in self.backbones if b.task is not None]

    @property
    def task(self) -> str | None:
        return self.live[0].task if len(self.live) == 1 else None

    @property
    def version(self) -> int | None:
        return self.live[0].version if len(self.live) == 1 else None

    @property
    def state(self) -> str:
        states = {b.state for b in self.backbones}
        return next((st for st in states if st != "idle"), "idle")

    @property
    def verified(self) -> bool | None:
        checks = [b.verified for b in self.backbones]
        if any(c is False for c in checks):
            return False
        return True if checks and all(checks) else None

    @property
    def problems(self) -> list[str]:
        return [
            f"{b.backbone['spec'] if b.backbone else '?'}: {p}"
            for b in self.backbones
            for p in b.problems
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "version": self.version,
            "state": self.state,
            "verified": self.verified,
            "problems": self.problems,
            "verification": self.verification,
            "backbones": [b.to_dict() for b in self.backbones],
        }


def live_status(home: Home, catalog: Catalog, verify: bool | str = True) -> HomeStatus:
    """Every live backbone of the home: its live task and version, state, and live-file check.

    ``verify``: True or `BITS`, the full check (O(backbone) each, imports torch); False or
    `QUICK`, only the cheap one (headers, size and mtime of the live file against the head
    file's record), which sets ``verified`` only when it fails; `AUTO`, the cheap one, and the
    full one for each backbone whose cheap check fails (``verified`` True when all pass).
    Neither of the cheap modes imports torch where every cheap check passes.
    """
    mode = {True: BITS, False: QUICK}.get(verify, verify)  # type: ignore[call-overload]
    if mode not in (BITS, QUICK, AUTO):
        raise ValueError(f"verify={verify!r}")
    store = Store.of(home)
    if legacy_live_present(store):  # a home from before 0005: moved first (imports torch)
        from manager.switch.live import migrate_single_live

        with contextlib.suppress(MgrError):  # a bad live/ is reported below, per backbone
            migrate_single_live(home, catalog)
    try:
        lock = store.lock(store.live_lock_file, shared=True)
    except MgrError:  # live/ leads outside the home: reported below as the live files' problem
        lock = contextlib.nullcontext()
    out = []
    with lock:
        with catalog.session(write=False) as s:
            rows = [_report(store, dep) for dep in host_deployments(s, home.host)]
        for rep, backbone, ref in rows:
            problem = None if mode == BITS else _quick_problem(store, backbone, ref)
            if mode == BITS or (mode == AUTO and problem is not None):
                rep.problems = _check_live(store, backbone, ref)
                rep.verified = not rep.problems
            elif problem is not None:
                rep.problems, rep.verified = [problem], False
            elif mode == AUTO:
                rep.verified, rep.verification = True, QUICK_VERIFICATION
            out.append(rep)
    home_status = HomeStatus(out)
    if not out:
        home_status.verification = "nothing has been switched yet: there is no live file"
    elif all(b.verification == QUICK_VERIFICATION for b in out):
        home_status.verification = QUICK_VERIFICATION
    return home_status


def _report(store: Store, dep: Any) -> tuple[StatusReport, tuple[str, str, str], VersionRef | None]:
    """One deployment row as a report (not checked yet), its backbone and live version."""
    ref = VersionRef.of(dep.version) if dep.version is not None else None
    bb = dep.backbone
    champion = dep.version.task.active_version if dep.version is not None else None
    folder = store.live / bb.content_hash[:16]
    rep = StatusReport(
        state=dep.state,
        task=ref.task if ref else None,
        version=ref.number if ref else None,
        version_id=ref.id if ref else None,
        method=ref.method if ref else None,
        pending=VersionRef.of(dep.pending_version).label
        if dep.pending_version is not None
        else None,
        backbone={"spec": bb.spec, "content_hash": bb.content_hash, "path": bb.path},
        updated_at=iso(dep.updated_at),
        live_file=str(folder / "backbone.safetensors"),
        head_file=str(folder / "head.safetensors"),
        champion=champion.number if champion is not None else None,
    )
    if ref is not None and rep.champion != ref.number:
        rep.notes.append(
            f"{ref.label} is live, but {ref.task}'s champion is "
            + (f"v{rep.champion}" if rep.champion is not None else "unset")
            + f" ('mgr switch {ref.task}' makes it live)"
        )
    return rep, (bb.spec, bb.content_hash, bb.path), ref


def _quick_problem(
    store: Store, backbone: tuple[str, str, str], ref: VersionRef | None
) -> str | None:
    """The cheap check (no torch): why the live files cannot be trusted, or None."""
    try:
        return live_problem(store, store.resolve(backbone[2]), ref.id if ref else None, backbone[1])
    except MgrError as exc:
        return str(exc)


def _check_live(store: Store, backbone: tuple[str, str, str], ref: VersionRef | None) -> list[str]:
    try:
        return _check_live_files(store, backbone, ref)
    except MgrError as exc:  # a bad catalog path, a live file that is a link: the one problem
        return [str(exc)]


def _check_live_files(
    store: Store, backbone: tuple[str, str, str], ref: VersionRef | None
) -> list[str]:
    import torch
    from safetensors.torch import load_file

    from manager.delta.apply import apply as apply_delta
    from manager.registry.backbones import file_content_hash
    from manager.switch.artifacts import load_verified, pieces, split_head
    from manager.switch.livefile import LiveFile

    spec, digest, rel = backbone
    base_path = store.resolve(rel)
    weights, head_path = live_weights(store, digest), live_head(store, digest)
    if not base_path.is_file():
        return [f"backbone file missing: {base_path}"]
    if not live_matches(weights, base_path):
        return [f"live file missing or not a copy of the backbone file: {weights}"]
    problems = []
    cheap = live_problem(store, base_path, ref.id if ref else None, digest)
    if cheap is not None:
        problems.append(cheap)
    try:
        got = file_content_hash(base_path)
    except Exception as exc:  # safetensors raises several kinds on a damaged file
        got = f"unreadable ({exc})"
    if got != digest:
        problems.append(f"backbone file {base_path} does not hash to the catalog's {digest[:12]}")
    base = LiveFile(base_path, readonly=True)
    live = LiveFile(weights, readonly=True)
    try:
        delta = None
        if ref is not None:
            try:
                shapes = {n: t.shape for n, t in base.tensors.items()}
                delta = load_verified(store, ref, spec, digest, shapes)
            except MgrError as exc:
                return [*problems, str(exc)]
        body, head = split_head(delta, base.tensors) if delta is not None else (None, {})
        by_name = {}
        for piece in pieces(body) if body is not None else []:
            by_name[next(iter(piece.layers or piece.whole))] = piece
        bad = []
        with torch.no_grad():
            for name, w0 in base.tensors.items():
                expected = w0
                if name in by_name:
                    expected = w0.clone()
                    apply_delta({name: expected}, {name: w0}, by_name[name])
                if not torch.equal(live.tensors[name], expected):
                    bad.append(name)
        if bad:
            problems.append(
                f"{len(bad)} live tensor(s) differ from W0 + delta: {', '.join(bad[:3])}"
            )
        dtype = next(iter(base.tensors.values())).dtype
        try:
            stored = load_file(str(head_path)) if head_path.is_file() else None
        except Exception as exc:  # safetensors raises several kinds on a bad file
            stored = None
            problems.append(f"head file unreadable: {exc}")
        if stored is not None and (
            set(stored) != set(head)
            or any(not torch.equal(stored[n], t.to(dtype)) for n, t in head.items())
        ):
            problems.append("the head file differs from the delta's head")
    finally:
        live.close()
        base.close()
    return problems
