"""What one ``mgr train`` needs of its task's catalog rows, read in one transaction.

``mgr train`` reads the task once, at the start (before any heavy import, so a typo in the name
fails at once), and hands this snapshot to the tuner, the trainer and the promotion gate. The
champion read here is the one the gate compares against: if another version becomes the champion
during the run, ``record_version`` sees it and does not apply the gate's "promote" (it compared
against the wrong one). No torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from manager.catalog import Catalog, tasks
from manager.catalog.lineage import version_classes
from manager.catalog.models import Task
from manager.catalog.refs import VersionRef


@dataclass(frozen=True)
class TaskInfo:
    """A detached snapshot of a task row, its champion and the version a new one descends from."""

    id: int
    name: str
    dataset: str
    data_root: str | None
    num_classes: int
    spec: str
    weights: str | None
    backbone_id: int | None
    parent_id: int | None  # the champion, else the latest version
    parent_number: int | None
    class_names: tuple[str, ...] = ()  # the task's label set, in label order
    champion: VersionRef | None = None
    champion_classes: tuple[str, ...] = ()  # what the champion answers with
    champion_lineage: dict[str, Any] | None = None


def task_info(task: Task) -> TaskInfo:
    """The snapshot of ``task`` (a row of an open session)."""
    parent = task.active_version or (task.versions[-1] if task.versions else None)
    champ = task.active_version
    return TaskInfo(
        task.id,
        task.name,
        task.dataset,
        task.data_root,
        task.num_classes,
        task.backbone_spec,
        task.weights,
        task.backbone_id,
        parent.id if parent is not None else None,
        parent.number if parent is not None else None,
        tuple(task.class_names),
        VersionRef.of(champ) if champ is not None else None,
        tuple(version_classes(champ)) if champ is not None else (),
        dict(champ.lineage) if champ is not None and champ.lineage else None,
    )


def load_task_info(catalog: Catalog, task_name: str) -> TaskInfo:
    """Task ``task_name``'s snapshot (``NotFound`` if there is none)."""
    with catalog.session(write=False) as s:
        return task_info(tasks.get_task(s, task_name))
