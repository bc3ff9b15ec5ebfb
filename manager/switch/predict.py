"""The live model as a serving process sees it: one backbone's two live files, no delta math.

``live/<hash>/backbone.safetensors`` already holds the merged weights and ``head.safetensors`` the
task's classifier, so loading them into a plain timm model gives the adapted model at the
backbone's own inference cost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from manager.catalog import Catalog
from manager.catalog.deployment import find_deployment, host_deployments
from manager.catalog.lineage import version_classes
from manager.catalog.refs import VersionRef
from manager.device import resolve_precision
from manager.errors import Conflict, Corrupt, MgrError
from manager.home import Home
from manager.store.fs import Store
from manager.switch.livecheck import live_head, live_problem, live_weights


@dataclass
class LiveModel:
    """A plain timm model loaded from the live files, and what it serves."""

    model: nn.Module
    task: str
    version: int
    class_names: list[str]
    transform: Callable[[Image.Image], torch.Tensor]


NONE_LIVE_HINT = "'mgr switch TASK' or pass --task"


def live_rows(catalog: Catalog) -> list[tuple[int, VersionRef]]:
    """``(backbone id, version)`` of every backbone of this host with a task live."""
    with catalog.session(write=False) as s:
        return [
            (d.backbone_id, VersionRef.of(d.version))
            for d in host_deployments(s, catalog.home.host)
            if d.version is not None
        ]


def the_live_version(catalog: Catalog) -> tuple[int, VersionRef]:
    """The one task live in this home, or one line saying why there is not exactly one."""
    rows = live_rows(catalog)
    if not rows:
        raise Conflict("no task is live: switch to one, or name a task", hint=NONE_LIVE_HINT)
    if len(rows) > 1:
        names = ", ".join(v.label for _, v in rows)
        raise Conflict(
            f"{len(rows)} tasks are live on {len(rows)} backbones ({names}): name the one that "
            "answers",
            hint="pass --task",
        )
    return rows[0]


def load_live_model(
    home: Home,
    catalog: Catalog,
    device: str = "cpu",
    precision: str | None = None,
    compile: bool = False,
    backbone_id: int | None = None,
    version_id: int | None = None,
) -> LiveModel:
    """The model built from backbone ``backbone_id``'s live files (None: the one backbone with
    a task live; several are an error naming them), on ``device`` in ``precision`` (default:
    bf16 on CUDA, fp32 elsewhere), compiled if asked. ``version_id``: the version the caller
    expects there; another one live (a switch in between) is an error, never another answer."""
    from safetensors.torch import load_file

    from manager.backbone import build_backbone, head_names
    from manager.datasets.transforms import data_config, eval_transform
    from manager.switch.live import migrate_single_live

    store = Store.of(home)
    migrate_single_live(home, catalog)
    if backbone_id is None:
        backbone_id = the_live_version(catalog)[0]
    with store.lock(store.live_lock_file, shared=True):
        with catalog.session(write=False) as s:
            dep = find_deployment(s, home.host, backbone_id)
            if dep is None or dep.version is None:
                raise Conflict(
                    "no task is live: switch to one, or name a task", hint=NONE_LIVE_HINT
                )
            if version_id is not None and dep.version_id != version_id:
                raise MgrError(
                    f"{dep.version.task.name}@{dep.version.number} became live meanwhile, not "
                    "the version asked for; run the command again"
                )
            task, version = dep.version.task.name, dep.version.number
            class_names = version_classes(dep.version)  # its own set: labels may have grown
            version_id, spec = dep.version_id, dep.backbone.spec
            digest = dep.backbone.content_hash
            base = store.resolve(dep.backbone.path)
        # Cheap (stats and headers): a live file changed since its switch is never served.
        problem = live_problem(store, base, version_id, digest)
        if problem is not None:
            raise Corrupt(
                f"{problem}; rebuild the live files (repair_live)",
                hint="run 'mgr switch --repair' to rebuild them",
            )
        weights, head_path = live_weights(store, digest), live_head(store, digest)
        head = load_file(str(head_path))
        model = build_backbone(spec, weights, num_classes=len(class_names))
    heads = set(head_names(model))
    expected = {n for n in model.state_dict() if n.split(".")[0] in heads}
    if set(head) != expected or any(
        model.state_dict()[n].shape != t.shape for n, t in head.items()
    ):
        raise MgrError(f"the live head file does not fit {spec} with {len(class_names)} classes")
    model.load_state_dict(head, strict=False)  # the backbone part came from the live file
    dev = torch.device(device)
    model = model.eval().to(dev, resolve_precision(precision, dev))
    if compile:
        model = torch.compile(model)
    dc = data_config(model)
    return LiveModel(
        model, task, version, class_names, eval_transform(dc["img_size"], dc["mean"], dc["std"])
    )


@dataclass
class ClassScore:
    """One class of a prediction (``name`` is ``"class"`` in the JSON)."""

    name: str
    index: int
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return {"class": self.name, "index": self.index, "probability": self.probability}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ClassScore:
        return cls(d["class"], d["index"], d["probability"])


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first."""

    image: str
    top: list[ClassScore]

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "top": [t.to_dict() for t in self.top]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prediction:
        return cls(d["image"], [ClassScore.from_dict(t) for t in d["top"]])


def read_images(
    paths: Sequence[str | os.PathLike[str]], max_pixels: int | None = None
) -> list[Image.Image]:
    """Decode image files to RGB; `MgrError` names the first unreadable or too large one."""
    from manager.datasets.folder import DEFAULT_MAX_PIXELS, read_image

    limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
    return [read_image(p, limit, cli_hint="raise the limit with --max-pixels") for p in paths]


@torch.inference_mode()
def predict_images(
    live: LiveModel, images: Sequence[Image.Image], names: Sequence[str], top_k: int = 5
) -> list[Prediction]:
    """Top-k classes and probabilities for decoded images (``names`` label the results)."""
    batch = torch.stack([live.transform(im) for im in images])
    p0 = next(live.model.parameters())
    with torch.inference_mode():
        probs = live.model(batch.to(p0.device, p0.dtype)).float().softmax(-1).cpu()
    k = min(top_k, probs.shape[1])
    out = []
    for name, p in zip(names, probs, strict=True):
        values, idx = p.topk(k)
        top = [
            ClassScore(live.class_names[i], int(i), float(v))
            for v, i in zip(values.tolist(), idx.tolist(), strict=True)
        ]
        out.append(Prediction(str(name), top))
    return out


def predict_files(
    live: LiveModel,
    images: Sequence[str | os.PathLike[str]],
    top_k: int = 5,
    max_pixels: int | None = None,
) -> list[Prediction]:
    """Top-k classes and probabilities for each image file (see `read_images` for the limit)."""
    return predict_images(live, read_images(images, max_pixels), [str(p) for p in images], top_k)
