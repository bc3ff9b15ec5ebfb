"""Checks behind ``mgr status`` and ``mgr verify``: the live files and every file on record.

"Verified" for the live files means, in full: the backbone file hashes to the catalog's content
hash; the active artifact's size and sha256 match the catalog; every tensor of the live file is
bit-identical (``torch.equal``) to a fresh merge of W0 and the active delta, computed one tensor at
a time; and the head file holds exactly the delta's head and names the active version.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import select

from manager.catalog import Catalog
from manager.catalog.deployment import get_deployment
from manager.catalog.models import VERSION_DELETED, AdapterVersion, Backbone
from manager.catalog.views import iso
from manager.errors import MgrError
from manager.home import Home
from manager.switch.artifacts import CORRUPT, MISSING, OK, VersionRef, check_file

LEFTOVER = "leftover"

VERIFICATION = (
    "live weights == W0 + the active delta, bit for bit (every tensor, torch.equal); head file "
    "== the delta's head; backbone and artifact hashes == the catalog's"
)


def live_status(home: Home, catalog: Catalog, verify: bool = True) -> dict[str, Any]:
    """The deployment (live task and version, state) and, with ``verify``, the live-file check."""
    from manager.switch.live import LivePaths, live_lock

    paths = LivePaths.of(home)
    with live_lock(home, shared=True):
        with catalog.session(write=False) as s:
            dep = get_deployment(s)
            ref = VersionRef.of(dep.version) if dep.version is not None else None
            bb = dep.backbone
            out: dict[str, Any] = {
                "state": dep.state,
                "task": ref.task if ref else None,
                "version": ref.number if ref else None,
                "version_id": ref.id if ref else None,
                "method": ref.method if ref else None,
                "pending": VersionRef.of(dep.pending_version).label
                if dep.pending_version is not None
                else None,
                "backbone": {"spec": bb.spec, "content_hash": bb.content_hash, "path": bb.path}
                if bb is not None
                else None,
                "updated_at": iso(dep.updated_at),
                "live_file": str(paths.weights),
                "head_file": str(paths.head),
                "verified": None,
                "verification": VERIFICATION,
                "problems": [],
            }
            backbone = (bb.spec, bb.content_hash, bb.path) if bb is not None else None
        if backbone is None:
            out["verification"] = "nothing has been switched yet: there is no live file"
        elif verify:
            out["problems"] = _check_live(home, backbone, ref)
            out["verified"] = not out["problems"]
    return out


def _check_live(home: Home, backbone: tuple[str, str, str], ref: VersionRef | None) -> list[str]:
    import torch
    from safetensors.torch import load_file

    from manager.backbone import content_hash
    from manager.delta.apply import apply as apply_delta
    from manager.switch.artifacts import load_verified, pieces, split_head
    from manager.switch.live import LivePaths, _applied_id, live_matches, read_head_meta
    from manager.switch.livefile import LiveFile

    spec, digest, rel = backbone
    paths = LivePaths.of(home)
    base_path = home.abs(rel)
    if not base_path.is_file():
        return [f"backbone file missing: {base_path}"]
    if not live_matches(paths.weights, base_path):
        return [f"live file missing or not a copy of the backbone file: {paths.weights}"]
    problems = []
    base = LiveFile(base_path, readonly=True)
    live = LiveFile(paths.weights, readonly=True)
    try:
        if content_hash(base.tensors) != digest:
            problems.append(
                f"backbone file {base_path} does not hash to the catalog's {digest[:12]}"
            )
        delta = None
        if ref is not None:
            try:
                shapes = {n: t.shape for n, t in base.tensors.items()}
                delta = load_verified(home, ref, spec, digest, shapes)
            except MgrError as exc:
                return [*problems, str(exc)]
        meta = read_head_meta(home)
        if _applied_id(meta) != (ref.id if ref else None):
            problems.append("the head file names another version than the deployment")
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
            stored = load_file(str(paths.head)) if paths.head.is_file() else None
        except Exception as exc:  # safetensors raises several kinds on a bad file
            stored = None
            problems.append(f"head file unreadable: {exc}")
        if stored is None and not paths.head.is_file():
            problems.append(f"head file missing: {paths.head}")
        elif stored is not None and (
            set(stored) != set(head)
            or any(not torch.equal(stored[n], t.to(dtype)) for n, t in head.items())
        ):
            problems.append("the head file differs from the delta's head")
    finally:
        live.close()
        base.close()
    return problems


def verify_all(home: Home, catalog: Catalog) -> dict[str, Any]:
    """Every artifact and backbone file against the catalog, untracked files, and the live files.

    The catalog's byte total (versions not deleted) must equal the bytes of the files under
    ``artifacts/``: a missing, resized, stray or leftover file is a problem.
    """
    with catalog.session(write=False) as s:
        rows = [
            (v.task.name, v.number, v.status, v.path, v.bytes, v.content_hash)
            for v in s.scalars(select(AdapterVersion).order_by(AdapterVersion.id))
        ]
        bb_rows = [
            (b.spec, b.path, b.bytes, b.content_hash)
            for b in s.scalars(select(Backbone).order_by(Backbone.id))
        ]
    versions: list[dict] = []
    referenced: set[Path] = set()
    catalog_bytes = 0
    for task, number, status, rel, size, sha in rows:
        if status == VERSION_DELETED:
            if home.abs(rel).exists():
                detail = "a deleted version's file is still on disk ('mgr gc' removes it)"
                versions.append(_entry(task, number, rel, size, LEFTOVER, detail))
            continue
        referenced.add(home.abs(rel).resolve())
        catalog_bytes += size
        versions.append(_entry(task, number, rel, size, *check_file(home, rel, size, sha)))
    backbones = []
    for spec, rel, size, digest in bb_rows:
        result, detail = _check_backbone(home, rel, size, digest)
        backbones.append(
            {"spec": spec, "path": rel, "bytes": size, "status": result, "detail": detail}
        )
    untracked, disk_bytes = [], 0
    files = (
        sorted(p for p in home.artifacts.rglob("*") if p.is_file())
        if home.artifacts.is_dir()
        else []
    )
    for path in files:
        if _in_progress(path):
            continue
        disk_bytes += path.stat().st_size
        if path.resolve() not in referenced:
            untracked.append(home.rel(path))
    leftovers = {v["path"] for v in versions if v["status"] == LEFTOVER}
    untracked = [u for u in untracked if u not in leftovers]
    live = live_status(home, catalog, verify=True)
    problems = (
        sum(v["status"] != OK for v in versions)
        + sum(b["status"] != OK for b in backbones)
        + len(untracked)
        + (catalog_bytes != disk_bytes)
        + (live["verified"] is False)
    )
    return {
        "ok": problems == 0,
        "problems": problems,
        "versions": versions,
        "backbones": backbones,
        "untracked": untracked,
        "totals": {"catalog_bytes": catalog_bytes, "disk_bytes": disk_bytes},
        "live": live,
    }


def _entry(task: str, number: int, rel: str, size: int, status: str, detail: str) -> dict:
    return {
        "task": task,
        "version": number,
        "path": rel,
        "bytes": size,
        "status": status,
        "detail": detail,
    }


def _check_backbone(home: Home, rel: str, size: int, digest: str) -> tuple[str, str]:
    path = home.abs(rel)
    if not path.is_file():
        return MISSING, f"{path} does not exist"
    if path.stat().st_size != size:
        return CORRUPT, f"{path.stat().st_size} bytes on disk, the catalog recorded {size}"
    from manager.backbone import content_hash
    from manager.switch.livefile import LiveFile

    try:
        with LiveFile(path, readonly=True) as f:
            got = content_hash(f.tensors)
    except MgrError as exc:
        return CORRUPT, str(exc)
    if got != digest:
        return CORRUPT, f"content hash {got[:12]}, the catalog recorded {digest[:12]}"
    return OK, ""


def trainer_temp(path: Path) -> int | None:
    """The pid in a trainer's temporary artifact name ``.pending-<pid>.safetensors``, else None."""
    stem = path.name.removeprefix(".pending-").removesuffix(".safetensors")
    return int(stem) if path.name.startswith(".pending-") and stem.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _in_progress(path: Path) -> bool:
    """A trainer's temporary artifact whose process is alive: not ours to judge yet."""
    pid = trainer_temp(path)
    return pid is not None and pid_alive(pid)
