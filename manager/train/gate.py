"""The promotion gate: a new version becomes the champion only if it beats the current one.

Both are scored the same way, on the same split: the backbone's W0 with the version's delta
applied exactly (as ``mgr switch`` serves it, the new delta as it will be stored, in its storage
dtype), the same decoding and normalisation as training, top-1 accuracy. The new version wins iff
``new >= champion + margin`` (points of top-1). The split is the task's validation split, which
training never sees; where training used it (``trainval``), the split the run reports on (test)
is compared instead, and the decision says so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from manager.catalog import Catalog, tasks
from manager.catalog.aliases import PromotionDecision
from manager.catalog.models import Backbone
from manager.catalog.refs import VersionRef
from manager.delta.delta import Delta
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store

MODES = ("gate", "always", "never")
VAL_SPLIT = "val"


def gate_split(trained_on: str, eval_split: str, asked: str | None = None) -> tuple[str, str]:
    """The split to compare on, and a note saying why that one."""
    if asked is not None:
        return asked, f"the split asked for (--gate-split {asked})"
    if trained_on in (VAL_SPLIT, "trainval"):
        return eval_split, (
            f"no held-out validation split (training used {trained_on}): compared on "
            f"{eval_split}, the split the run reports on"
        )
    return VAL_SPLIT, "the validation split (never trained on)"


def decide(
    home: Home,
    catalog: Catalog,
    task_name: str,
    delta: Delta,
    mode: str,
    *,
    backbone: Backbone,
    trained_on: str,
    eval_split: str,
    margin: float = 0.0,
    split: str | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], Any] = print,
) -> PromotionDecision:
    """Whether ``delta`` (a new version of ``task_name``) should become its champion.

    ``always`` and ``never`` evaluate nothing; ``gate`` scores the new delta and the champion's
    (the first version of a task is always the champion). ``backbone``: the task's row.
    """
    if mode not in MODES:
        raise MgrError(f"--promote must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "gate":
        return PromotionDecision(mode, mode == "always", f"--promote {mode}")
    with catalog.session(write=False) as s:
        task = tasks.get_task(s, task_name)
        champion = VersionRef.of(task.active_version) if task.active_version else None
        dataset, root = task.dataset, task.data_root
    if champion is None:
        return PromotionDecision(mode, True, "first version")
    split_name, note = gate_split(trained_on, eval_split, split)
    details: dict[str, Any] = {
        "metric": "top1",
        "split": split_name,
        "split_note": note,
        "margin": margin,
        "champion_version": champion.number,
    }
    try:
        old = load_champion(Store.of(home), champion, backbone)
    except MgrError as exc:  # a champion that cannot be loaded cannot be served either
        return PromotionDecision(
            mode, True, f"champion v{champion.number} could not be scored: {exc}", champion.id,
            details,
        )  # fmt: skip
    log(f"gate: scoring the new version and champion v{champion.number} on {split_name}")
    new = Delta.from_bytes(delta.to_bytes())  # as it will be stored: the storage dtype's values
    (new_score, old_score), images = score_deltas(
        home, backbone, champion.num_classes, [new, old], dataset, root, split_name, device
    )
    won = new_score >= old_score + margin
    details.update(score=round(new_score, 4), champion_score=round(old_score, 4), images=images)
    reason = f"new {'>=' if won else '<'} champion + margin on {split_name}"
    return PromotionDecision(mode, won, reason, champion.id, details)


def load_champion(store: Store, ref: VersionRef, backbone: Backbone) -> Delta:
    """The champion's delta, checked against the catalog's size and sha256 and the backbone."""
    from manager.store.maintenance import OK, compare

    path = store.resolve(ref.path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MgrError(f"cannot read its artifact {path}: {exc.strerror or exc}") from None
    status, detail = compare(data, ref.bytes, ref.content_hash)
    if status != OK:
        raise MgrError(f"its artifact is corrupt ({detail}): {path}")
    delta = Delta.from_bytes(data, where=str(path))
    if delta.meta.backbone_hash != backbone.content_hash:  # shapes are checked when applied
        raise MgrError(f"its artifact was made for another backbone ({delta.meta.backbone})")
    return delta


@torch.no_grad()
def score_deltas(
    home: Home,
    backbone: Backbone,
    num_classes: int,
    deltas: Sequence[Delta],
    dataset: str,
    root: str | None,
    split: str,
    device: torch.device | str = "cpu",
) -> tuple[list[float], int]:
    """Top-1 (%) of W0 + each delta on ``split`` of ``dataset``, and the number of images."""
    from manager.datasets import create_dataset
    from manager.datasets.transforms import data_config
    from manager.delta.apply import apply
    from manager.store.backbones import load_backbone
    from manager.train.data import ImageTensors, decode_transform
    from manager.train.evaluate import evaluate

    model = load_backbone(home, backbone, num_classes=num_classes).to(device).eval()
    dc = data_config(model)
    data = ImageTensors.decode(
        create_dataset(dataset, root, split, decode_transform(dc["img_size"]))
    )
    mean, std = torch.tensor(dc["mean"]), torch.tensor(dc["std"])
    live = model.state_dict()  # shares storage with the model's parameters
    w0 = {name: t.clone() for name, t in live.items()}
    scores = []
    for delta in deltas:
        for name, t in live.items():  # back to W0 (and the fresh head) before each delta
            t.copy_(w0[name])
        apply(live, w0, delta)
        scores.append(evaluate(model, data, num_classes, mean, std, device=device)["top1"])
    return scores, len(data)
