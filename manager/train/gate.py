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

from manager.catalog.aliases import PromotionDecision
from manager.catalog.models import Backbone
from manager.catalog.refs import VersionRef
from manager.delta.delta import Delta
from manager.errors import BadInput, Corrupt, MgrError
from manager.home import Home
from manager.store.fs import Store
from manager.train.config import MAX_CLASS_DROP, PROMOTE_MODES
from manager.train.lineage import class_drops
from manager.train.task_info import TaskInfo

MODES = PROMOTE_MODES
VAL_SPLIT = "val"
# The forgetting gate compares classes with at least this many evaluation images.
MIN_CLASS_IMAGES = 10
__all__ = ["MAX_CLASS_DROP", "MODES", "decide", "gate_split", "load_champion", "score_by_class"]


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
    info: TaskInfo,
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
    classes: Sequence[str] | None = None,
    max_class_drop: float | None = None,
) -> PromotionDecision:
    """Whether ``delta`` (a new version of ``info``'s task) should become its champion.

    ``always`` and ``never`` evaluate nothing; ``gate`` scores the new delta and the champion's
    (``info.champion``; the first version of a task is always the champion). ``backbone``: the
    task's row. ``classes``: the new version's class names (default: the task's); both versions
    are scored per class by name, and with ``max_class_drop`` the new one is refused if it loses
    more than that many points of top-1 on any class the champion knew (even if its top-1 rises).
    """
    if mode not in MODES:
        raise BadInput(f"promote must be one of {', '.join(MODES)}, not {mode!r}")
    if mode != "gate":
        return PromotionDecision(mode, mode == "always", f"--promote {mode}")
    champion = info.champion
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
    label_set, old_classes = list(info.class_names), list(info.champion_classes)
    new_classes = list(classes) if classes is not None else label_set
    scored, counts = score_by_class(
        home, backbone, [(new, new_classes), (old, old_classes)], info.dataset, info.data_root,
        split_name, label_set, device,
    )  # fmt: skip
    (new_score, new_pc), (old_score, old_pc) = scored
    won = new_score >= old_score + margin
    details.update(
        score=round(new_score, 4), champion_score=round(old_score, 4), images=sum(counts.values())
    )
    reason = f"new {'>=' if won else '<'} champion + margin on {split_name}"
    refused = _class_gate(details, new_pc, old_pc, old_classes, counts, max_class_drop)
    if won and refused is not None:
        won, reason = False, refused
    return PromotionDecision(mode, won, reason, champion.id, details)


def _class_gate(
    details: dict[str, Any],
    new_pc: dict[str, float],
    old_pc: dict[str, float],
    old_classes: Sequence[str],
    counts: dict[str, int],
    max_class_drop: float | None,
) -> str | None:
    """The forgetting gate: why the new version is refused for one class's drop, or None.
    Fills ``details`` with the worst classes (and the limit, where one is set)."""
    # Classes with few images are listed but not gated: one image is worth 100 points there.
    gated = [c for c in old_classes if counts.get(c, 0) >= MIN_CLASS_IMAGES]
    details["worst_classes"] = [
        {"class": c, "champion": round(o, 2), "new": round(n, 2), "change": round(n - o, 2)}
        for c, o, n in class_drops(new_pc, old_pc, old_classes)[:5]
    ]
    if max_class_drop is None:
        return None
    details.update(max_class_drop=max_class_drop, gated_classes=len(gated))
    drops = class_drops(new_pc, old_pc, gated)
    if not drops or drops[0][1] - drops[0][2] <= max_class_drop:
        return None
    name, old, new = drops[0]
    return (
        f"class {name!r} drops {old - new:.1f} points ({old:.1f}% -> {new:.1f}%), "
        f"over --max-class-drop {max_class_drop:g}"
    )


def load_champion(store: Store, ref: VersionRef, backbone: Backbone) -> Delta:
    """The champion's delta, checked against the catalog's size and sha256 and the backbone."""
    from manager.registry.maintenance import OK, compare

    path = store.resolve(ref.path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise Corrupt(f"cannot read its artifact {path}: {exc.strerror or exc}") from None
    status, detail = compare(data, ref.bytes, ref.content_hash)
    if status != OK:
        raise Corrupt(f"its artifact is corrupt ({detail}): {path}")
    delta = Delta.from_bytes(data, where=str(path))
    if delta.meta.backbone_hash != backbone.content_hash:  # shapes are checked when applied
        raise Corrupt(f"its artifact was made for another backbone ({delta.meta.backbone})")
    return delta


@torch.no_grad()
def score_by_class(
    home: Home,
    backbone: Backbone,
    scored: Sequence[tuple[Delta, Sequence[str]]],
    dataset: str,
    root: str | None,
    split: str,
    label_set: Sequence[str],
    device: torch.device | str = "cpu",
) -> tuple[list[tuple[float, dict[str, float]]], dict[str, int]]:
    """Top-1 (%) and top-1 per class name of W0 + each ``(delta, its class names)`` on ``split``,
    and the split's image count per class name.

    The split's labels are the task's (``label_set``); each version's answers are read as its
    own class names, so versions trained on different label sets are compared class by class.
    """
    from manager.datasets import create_dataset
    from manager.datasets.transforms import data_config
    from manager.delta.apply import apply
    from manager.registry.backbones import load_backbone
    from manager.train.data import ImageTensors, decode_transform
    from manager.train.lineage import label_lut

    out: list[tuple[float, dict[str, float]]] = []
    data = None
    models: dict[int, tuple[torch.nn.Module, dict, dict]] = {}
    n = len(label_set)
    for delta, names in scored:
        k = delta.meta.num_classes
        if k not in models:
            model = load_backbone(home, backbone, num_classes=k).to(device).eval()
            live = model.state_dict()  # shares storage with the model's parameters
            models[k] = (model, live, {name: t.clone() for name, t in live.items()})
        model, live, w0 = models[k]
        if data is None:
            dc = data_config(model)
            mean, std = torch.tensor(dc["mean"]), torch.tensor(dc["std"])
            ds = create_dataset(dataset, root, split, decode_transform(dc["img_size"]))
            data = ImageTensors.decode(ds, name=split)
            data.labels = label_lut(ds.classes, label_set, "this")[data.labels]
        for name, t in live.items():  # back to W0 (and the fresh head) before each delta
            t.copy_(w0[name])
        apply(live, w0, delta)
        index = {c: i for i, c in enumerate(label_set)}
        to_set = torch.tensor([index.get(c, -1) for c in names][:k] + [-1] * (k - len(names)))
        preds = torch.cat(
            [to_set[model(x.to(device)).argmax(1).cpu()] for x, _ in data.batches(128, mean, std)]
        )
        correct = (preds == data.labels).float()
        count = torch.bincount(data.labels, minlength=n)
        hits = torch.bincount(data.labels, weights=correct, minlength=n)
        per_class = {
            c: round(100.0 * float(hits[i] / count[i]), 4)
            for i, c in enumerate(label_set)
            if count[i]
        }
        out.append((100.0 * float(correct.mean()) if len(correct) else 0.0, per_class))
    labels = data.labels if data is not None else torch.zeros(0, dtype=torch.long)
    count = torch.bincount(labels, minlength=n).tolist()
    return out, {c: int(k) for c, k in zip(label_set, count, strict=True)}
