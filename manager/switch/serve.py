"""The live model as a serving process sees it: the two live files, no delta math.

``live/backbone.safetensors`` already holds the merged weights and ``live/head.safetensors`` the
task's classifier, so loading them into a plain timm model gives the adapted model at the
backbone's own inference cost.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from manager.catalog import Catalog
from manager.catalog.deployment import get_deployment
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store
from manager.switch.live import live_head, live_problem, live_weights


@dataclass
class LiveModel:
    """A plain timm model loaded from the live files, and what it serves."""

    model: nn.Module
    task: str
    version: int
    class_names: list[str]
    transform: Callable[[Image.Image], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MgrError("--device cuda: no CUDA device is available here")
    return torch.device(name)


def load_live_model(home: Home, catalog: Catalog, device: str = "cpu") -> LiveModel:
    """The model built from the live files (which must name the deployment's active version)."""
    from safetensors.torch import load_file

    from manager.backbone import build_backbone, head_names
    from manager.datasets.transforms import data_config, eval_transform

    store = Store.of(home)
    with store.lock(store.live_lock_file, shared=True):
        with catalog.session(write=False) as s:
            dep = get_deployment(s)
            if dep.version is None:
                raise MgrError("no task is live: 'mgr switch TASK' or pass --task")
            task, version = dep.version.task.name, dep.version.number
            class_names = list(dep.version.task.class_names)
            version_id, spec = dep.version_id, dep.backbone.spec
            base = store.resolve(dep.backbone.path)
        # Cheap (stats and headers): a live file changed since its switch is never served.
        problem = live_problem(store, base, version_id)
        if problem is not None:
            raise MgrError(f"{problem}; run 'mgr switch --repair' to rebuild the live files")
        weights, head_path = live_weights(store), live_head(store)
        head = load_file(str(head_path))
        model = build_backbone(spec, weights, num_classes=len(class_names))
    heads = set(head_names(model))
    expected = {n for n in model.state_dict() if n.split(".")[0] in heads}
    if set(head) != expected or any(
        model.state_dict()[n].shape != t.shape for n, t in head.items()
    ):
        raise MgrError(f"the live head file does not fit {spec} with {len(class_names)} classes")
    model.load_state_dict(head, strict=False)  # the backbone part came from the live file
    model = model.eval().to(device)
    dc = data_config(model)
    return LiveModel(
        model, task, version, class_names, eval_transform(dc["img_size"], dc["mean"], dc["std"])
    )


@torch.inference_mode()
def predict_files(live: LiveModel, images: Sequence[Path], top_k: int = 5) -> list[dict]:
    """Top-k classes and probabilities for each image file."""
    from PIL import UnidentifiedImageError

    batch = []
    for path in images:
        try:
            with Image.open(path) as im:
                batch.append(live.transform(im))
        except (OSError, UnidentifiedImageError) as exc:
            raise MgrError(f"cannot read image {path}: {exc}") from None
    device = next(live.model.parameters()).device
    probs = live.model(torch.stack(batch).to(device)).float().softmax(-1).cpu()
    k = min(top_k, probs.shape[1])
    out = []
    for path, p in zip(images, probs, strict=True):
        values, idx = p.topk(k)
        top = [
            {"class": live.class_names[i], "index": int(i), "probability": float(v)}
            for v, i in zip(values.tolist(), idx.tolist(), strict=True)
        ]
        out.append({"image": str(path), "top": top})
    return out
