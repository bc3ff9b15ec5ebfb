"""What a training run records about where a version came from, and ``--if-changed``.

A version's lineage (``adapter_versions.lineage``) holds its class names in label order (the
set it serves), its training and evaluation data (data set, root, split, image count and count
per class, and a fingerprint of the data's file list; see ``manager.datasets.fingerprint``),
the hash of its settings, its parent and its warm start (``--init``). ``mgr versions`` diffs it
against the parent's; ``mgr train --if-changed`` compares the data's fingerprint, the class set
and the settings' hash with the champion's and trains nothing when all three match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch

from manager.errors import Conflict, MgrError
from manager.train.config import TrainConfig

# Settings that do not change what is learnt, or record how they were chosen: left out of the
# hash so a nightly run that only differs in them still counts as unchanged.
_NOT_SETTINGS = ("tune", "compile", "extra")


class Unchanged(Exception):
    """``--if-changed`` found nothing new: the message is the one line to print (exit 0)."""


def settings_hash(cfg: TrainConfig, train_split: str, eval_split: str) -> str:
    """sha256 of the run's settings (every TrainConfig field but ``_NOT_SETTINGS``) and splits."""
    d = {k: v for k, v in cfg.to_json().items() if k not in _NOT_SETTINGS}
    d.update(train_split=train_split, eval_split=eval_split)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def data_identity(dataset: str, root: str | None, *, content: bool = False) -> dict[str, Any]:
    """The data set's spec, root, the folder it was found in and its files' fingerprint."""
    from manager.datasets import describe
    from manager.datasets.fingerprint import fingerprint

    try:
        _, found = describe(dataset, root)
    except MgrError:
        found = None
    return {
        "dataset": dataset,
        "root": root,
        "folder": str(found) if found is not None else None,
        "fingerprint": fingerprint(dataset, found, content=content),
    }


def label_lut(data_classes: Sequence[str], label_set: Sequence[str], task: str) -> torch.Tensor:
    """Data-set label -> the task's label, by class name (the task's indices never change).

    A class the data has but the label set lacks is refused: ``mgr task refresh`` records it.
    """
    index = {name: i for i, name in enumerate(label_set)}
    missing = [c for c in data_classes if c not in index]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise Conflict(
            f"the data of task {task!r} has {len(missing)} class(es) not in its label set "
            f"({shown}); the label set must record them first",
            hint=f"record them with 'mgr task refresh {task} --yes'",
        )
    return torch.tensor([index[c] for c in data_classes], dtype=torch.long)


def split_record(split: str, labels: torch.Tensor, classes: Sequence[str]) -> dict[str, Any]:
    """One split's image count and count per class name (only classes with images)."""
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return {
        "split": split,
        "images": int(labels.numel()),
        "per_class": {c: int(n) for c, n in zip(classes, counts, strict=True) if n},
    }


def unchanged_reason(
    champion: dict[str, Any] | None, identity: dict[str, Any], classes: Sequence[str], settings: str
) -> str | None:
    """Why nothing needs training (a line), or None when data, classes or settings changed."""
    if not champion:
        return None
    data = champion.get("data") or {}
    same = (
        data.get("dataset") == identity["dataset"]
        and (data.get("fingerprint") or {}).get("sha256") == identity["fingerprint"]["sha256"]
        and list(champion.get("classes") or []) == list(classes)
        and champion.get("settings_hash") == settings
    )
    if not same:
        return None
    fp = identity["fingerprint"]
    return (
        f"unchanged: data ({fp['files']} files, fingerprint {fp['sha256'][:12]}), classes and "
        "settings match the champion's; nothing trained"
    )


def per_class_top1(
    logits_argmax: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
) -> dict[str, float]:
    """Top-1 (%) per class name over the classes with evaluation images (torchmetrics)."""
    from torchmetrics.functional.classification import multiclass_accuracy

    n = len(classes)
    acc = multiclass_accuracy(logits_argmax, labels, num_classes=n, average=None, top_k=1)
    present = torch.bincount(labels, minlength=n) > 0
    return {c: round(100.0 * float(acc[i]), 4) for i, c in enumerate(classes) if present[i]}


def class_drops(
    new: dict[str, float], old: dict[str, float], known: Sequence[str]
) -> list[tuple[str, float, float]]:
    """(class, champion %, new %) for each class the champion knew, worst drop first."""
    rows = [(c, old[c], new[c]) for c in known if c in old and c in new]
    return sorted(rows, key=lambda r: r[2] - r[1])
