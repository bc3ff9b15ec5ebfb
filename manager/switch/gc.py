"""Retention of old adapter versions: keep the newest N per task, never one in use.

Rows are marked deleted (and the events recorded) in one write transaction, and the files are
removed after it commits: a crash in between leaves files of deleted rows, which the next gc
removes, never a ready row without its file. The write transaction serialises with a switch's
step (a), which re-checks that its target is still ready, and gc skips the deployment's live and
pending versions, so a switch never loses the artifact it needs.
"""

from __future__ import annotations

from typing import Any

from manager.catalog import Catalog, events, tasks
from manager.catalog.deployment import get_deployment
from manager.catalog.models import VERSION_DELETED, VERSION_READY
from manager.errors import MgrError
from manager.home import Home
from manager.switch.check import pid_alive, trainer_temp

DEFAULT_KEEP = 3


def collect_garbage(
    home: Home,
    catalog: Catalog,
    keep: int = DEFAULT_KEEP,
    task: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Delete all but the newest ``keep`` versions of each task (or of ``task``).

    Always kept besides: a task's active version and the deployment's live and pending ones.
    Also removes files left behind by versions deleted earlier and by trainers that died.
    """
    if keep < 0:
        raise MgrError("--keep must be 0 or more")
    deleted, kept, leftovers = [], [], []
    with catalog.session() as s:
        dep = get_deployment(s)
        in_use = {dep.version_id: "live", dep.pending_version_id: "pending"}
        chosen = [tasks.get_task(s, task)] if task is not None else tasks.list_tasks(s)
        for t in chosen:
            leftovers += [
                v.path
                for v in t.versions
                if v.status == VERSION_DELETED and home.abs(v.path).exists()
            ]
            ready = sorted(
                (v for v in t.versions if v.status == VERSION_READY),
                key=lambda v: v.number,
                reverse=True,
            )
            for i, v in enumerate(ready):
                reasons = [r for vid, r in in_use.items() if vid == v.id and vid is not None]
                if v.id == t.active_version_id:
                    reasons.append("active")
                if i < keep:
                    reasons.append("newest")
                entry = {"task": t.name, "version": v.number, "bytes": v.bytes, "path": v.path}
                if reasons:
                    kept.append(entry | {"reasons": reasons})
                    continue
                deleted.append(entry)
                if not dry_run:
                    v.status = VERSION_DELETED
                    events.record_event(
                        s,
                        events.VERSION_DELETED,
                        task_name=t.name,
                        version_id=v.id,
                        number=v.number,
                        bytes=v.bytes,
                        reason="gc",
                    )
        freed = sum(d["bytes"] for d in deleted)
        if not dry_run and (deleted or leftovers):
            events.record_event(
                s,
                events.GC,
                task_name=task,
                keep=keep,
                deleted=[f"{d['task']}@{d['version']}" for d in deleted],
                freed_bytes=freed,
                leftover_files=len(leftovers),
            )
    # Temporary artifacts of trainers that died (SIGKILL skips their clean-up).
    temps = sorted(
        home.rel(p)
        for p in (
            home.artifacts.glob("*/.pending-*.safetensors") if home.artifacts.is_dir() else []
        )
        if (pid := trainer_temp(p)) is not None and not pid_alive(pid)
    )
    leftovers += temps
    if not dry_run:  # after the commit: see the module docstring
        for rel in [d["path"] for d in deleted] + leftovers:
            home.abs(rel).unlink(missing_ok=True)
    return {
        "dry_run": dry_run,
        "keep": keep,
        "deleted": deleted,
        "kept": kept,
        "leftover_files": leftovers,
        "freed_bytes": freed,
    }
