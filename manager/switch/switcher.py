"""`Switcher`: one backbone in memory, task deltas hot-swapped onto it by exact writes.

The backbone is loaded once (hash-checked) and a read-only copy of its tensors is kept as W0.
``switch(task)`` restores the old delta's supports from W0 and writes the new delta's values
(``manager.delta.apply``), never subtracting, so the weights after any sequence of switches are
bit-identical to a fresh merge. The classifier is resized (timm ``reset_classifier``) when the
class count changes, then set. This is the Python API for long-running processes; the catalog's
deployment row describes the live *file* (``mgr switch``), not this in-memory model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from manager.catalog import Catalog, open_catalog, tasks
from manager.catalog.models import Backbone
from manager.catalog.refs import BackboneRef, VersionRef, resolve_version
from manager.delta.apply import switch as switch_delta
from manager.delta.delta import Delta
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store
from manager.switch.artifacts import load_verified, split_head

if TYPE_CHECKING:
    from PIL import Image


class Switcher:
    """A live model in memory: ``switch(task, version)`` then ``predict(images)``."""

    def __init__(
        self,
        home: Home | str | Path | None = None,
        catalog: Catalog | None = None,
        *,
        device: str | torch.device = "cpu",
        cache_size: int = 8,
    ):
        self.home = home if isinstance(home, Home) else Home.resolve(home)
        self.store = Store.of(self.home)
        self._own_catalog = catalog is None
        self.catalog = catalog if catalog is not None else open_catalog(self.home)
        self.device = torch.device(device)
        self.model: nn.Module | None = None
        self.base: dict[str, Tensor] = {}  # W0, read-only by convention
        self.backbone: BackboneRef | None = None
        self.current: VersionRef | None = None
        self.class_names: list[str] = []
        self._body: Delta | None = None  # the live delta's backbone part (a restore undoes it)
        self._cache: OrderedDict[tuple[int, str], Delta] = OrderedDict()
        self._cache_size = cache_size

    # -- loading ---------------------------------------------------------------------------

    def _ensure_backbone(self, backbone_id: int) -> None:
        if self.backbone is not None:
            if self.backbone.id != backbone_id:
                raise MgrError(
                    f"this switcher holds backbone {self.backbone.spec} "
                    f"(weights {self.backbone.content_hash[:12]}); the task is bound to another "
                    "backbone, and all tasks switched here must share one"
                )
            return
        from manager.store.backbones import load_backbone

        with self.catalog.session(write=False) as s:
            row = s.get(Backbone, backbone_id)
            if row is None:
                raise MgrError(f"backbone {backbone_id} is not in the catalog")
            ref = BackboneRef.of(row)
            model = load_backbone(self.home, row, num_classes=0)
        self.model = model.eval().to(self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.base = {n: p.detach().clone() for n, p in self.model.named_parameters()}
        self.backbone = ref

    def _load(self, ref: VersionRef) -> Delta:
        key = (ref.id, ref.content_hash)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        assert self.backbone is not None
        shapes = {n: t.shape for n, t in self.base.items()}
        delta = load_verified(
            self.store, ref, self.backbone.spec, self.backbone.content_hash, shapes
        )
        self._cache[key] = delta
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return delta

    # -- switching -------------------------------------------------------------------------

    def switch(self, task: str | None, version: int | None = None) -> bool:
        """Make ``task``'s version live (None: its active one; ``task=None``: the backbone alone).

        Returns False when it already was live. A missing or corrupt artifact raises MgrError
        and leaves the model as it was.
        """
        target = None
        class_names: list[str] = []
        if task is not None:
            with self.catalog.session(write=False) as s:
                target = resolve_version(s, task, version)
                class_names = list(tasks.get_task(s, task).class_names)
        if target == self.current:
            return False
        if target is None and self.model is None:
            return False
        if target is not None:
            self._ensure_backbone(target.backbone_id)
        new = self._load(target) if target is not None else None  # verified before any write
        body, head = split_head(new, self.base) if new is not None else (None, {})
        self._set_head(new.meta.num_classes if new is not None else 0, head)
        live = {n: p for n, p in self.model.named_parameters() if n in self.base}
        switch_delta(live, self.base, self._body, body)
        self._body, self.current, self.class_names = body, target, class_names
        return True

    @torch.no_grad()
    def _set_head(self, num_classes: int, head: dict[str, Tensor]) -> None:
        """Resize the classifier if needed and set it; undone if the delta's head does not fit."""
        from manager.backbone import head_names

        model = self.model
        saved = {h: model.get_submodule(h) for h in head_names(model) if hasattr(model, h)}
        saved_classes = getattr(model, "num_classes", None)
        if saved_classes != num_classes:
            with torch.random.fork_rng(devices=[]):  # timm re-initialises the new head
                model.reset_classifier(num_classes)
            model.to(self.device)
        params = {n: p for n, p in model.named_parameters() if n not in self.base}
        bad = sorted(n for n, t in head.items() if n not in params or params[n].shape != t.shape)
        unset = sorted(set(params) - set(head))
        if bad or unset:
            for h, module in saved.items():
                model.set_submodule(h, module)
            model.num_classes = saved_classes
            raise MgrError(
                f"the delta's head does not fit the model's {num_classes}-class classifier "
                f"(mismatched: {bad or '-'}; not in the delta: {unset or '-'})"
            )
        for n, t in head.items():
            params[n].copy_(t)

    # -- inference -------------------------------------------------------------------------

    def transform(self) -> Callable[[Image.Image], Tensor]:
        """The eval transform (resize, normalise) of the loaded backbone."""
        from manager.datasets.transforms import data_config, eval_transform

        if self.model is None:
            raise MgrError("no backbone loaded yet: switch to a task first")
        dc = data_config(self.model)
        return eval_transform(dc["img_size"], dc["mean"], dc["std"])

    @torch.inference_mode()
    def predict(self, images: Tensor | Sequence) -> Tensor:
        """Class probabilities ``(batch, classes)`` of the live task.

        ``images``: a normalised batch ``(B, 3, H, W)``, or PIL images (transformed here).
        """
        if self.current is None or self.model is None:
            raise MgrError("no task is live: switch to one first")
        if not isinstance(images, Tensor):
            tf = self.transform()
            images = torch.stack([tf(im) for im in images])
        logits = self.model(images.to(self.device, next(self.model.parameters()).dtype))
        return logits.float().softmax(dim=-1)

    def close(self) -> None:
        if self._own_catalog:
            self.catalog.close()

    def __enter__(self) -> Switcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
