"""`Switcher`: one backbone in memory, task deltas hot-swapped onto it by exact writes.

The backbone is loaded once (hash-checked) and a read-only copy of its tensors is kept as W0, in
its storage dtype. The serving model's backbone weights live in one flat buffer
(``manager.delta.fused``); each task gets a switch plan once (flat support index, W0 there, W0 + dW
there), so ``switch(task)`` is two ``index_copy_`` kernels whatever the depth, never a subtraction:
after any sequence of switches the weights are bit-identical to a fresh merge (in ``precision``
other than the storage dtype: to the cast of the exact merge). The classifier is resized (timm
``reset_classifier``) when the class count changes, then set.

``compile=True`` compiles the backbone's feature path once; the head runs eagerly outside it, and
switches write the same parameter tensors in place, so a compiled model serves every task without
recompiling. This is the Python API for long-running processes; the catalog's deployment row
describes the live *file* (``mgr switch``), not this in-memory model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from manager.catalog import Catalog, open_catalog
from manager.catalog.lineage import classes_of
from manager.catalog.models import Backbone
from manager.catalog.refs import BackboneRef, VersionRef, resolve_version
from manager.delta.delta import Delta
from manager.delta.fused import FlatWeights, PlanCache, SwitchPlan, fused_switch
from manager.device import resolve_device, resolve_precision
from manager.errors import Conflict, MgrError, NotFound
from manager.home import Home
from manager.store.fs import Store
from manager.switch.artifacts import load_verified, split_head

if TYPE_CHECKING:
    from PIL import Image


class _Entry:
    """A cached version: its backbone part, head tensors and switch plan."""

    def __init__(self, body: Delta, head: dict[str, Tensor], plan: SwitchPlan):
        self.body, self.head, self.plan = body, head, plan

    @property
    def delta(self) -> Delta:
        """The version's whole delta (backbone part and head) again."""
        return Delta(self.body.layers, {**self.body.whole, **self.head}, self.body.meta)


Key = tuple[int, str]  # (version id, content hash): one artifact's bytes


def key_of(ref: VersionRef) -> Key:
    return (ref.id, ref.content_hash)


class DeltaCache:
    """The cache policy of a `Switcher`: which loaded deltas stay in memory.

    Entries are kept least recently used first; after each load `trim` drops what the policy
    does not keep. This one keeps the ``size`` most recent; a server passes its own policy (pinned
    tasks, counters: ``serve.engine.ResidentCache``) instead of subclassing the switcher.
    """

    def __init__(self, size: int = 8):
        self.size = size
        self.entries: OrderedDict[Key, _Entry] = OrderedDict()
        self.tasks_of: dict[Key, str] = {}  # which task each entry belongs to

    def get(self, ref: VersionRef) -> _Entry | None:
        """The entry of ``ref`` if held, made the most recent."""
        key = key_of(ref)
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    def peek(self, key: Key) -> _Entry | None:
        """The entry of ``key`` if held, its recency unchanged."""
        return self.entries.get(key)

    def put(self, ref: VersionRef, entry: _Entry) -> None:
        """Keep ``entry`` as the most recent, then `trim`."""
        key = key_of(ref)
        self.entries[key] = entry
        self.entries.move_to_end(key)
        self.tasks_of[key] = ref.task
        self.trim(ref)

    def trim(self, loaded: VersionRef) -> None:
        """Drop what the policy does not keep after ``loaded`` was loaded (LRU first)."""
        while len(self.entries) > self.size:
            self.pop(next(iter(self.entries)))

    def pop(self, key: Key) -> None:
        self.entries.pop(key, None)
        self.tasks_of.pop(key, None)

    def clear(self) -> None:
        self.entries.clear()
        self.tasks_of.clear()

    def tasks(self) -> set[str]:
        """The tasks with a delta held."""
        return set(self.tasks_of.values())

    def __contains__(self, key: object) -> bool:
        return key in self.entries

    def __iter__(self):  # keys, least recently used first
        return iter(list(self.entries))

    def __len__(self) -> int:
        return len(self.entries)


class Switcher:
    """A live model in memory: ``switch(task, version)`` then ``predict(images)``."""

    def __init__(
        self,
        home: Home | str | Path | None = None,
        catalog: Catalog | None = None,
        *,
        device: str | torch.device = "cpu",
        precision: str | None = None,
        compile: bool = False,
        cache_size: int = 8,
        cache: DeltaCache | None = None,
    ):
        """``cache``: which loaded deltas stay in memory (default: the ``cache_size`` most
        recently used, `DeltaCache`)."""
        self.home = home if isinstance(home, Home) else Home.resolve(home)
        self.store = Store.of(self.home)
        self._own_catalog = catalog is None
        self.catalog = catalog if catalog is not None else open_catalog(self.home)
        self.device = resolve_device(str(device))
        self.dtype = resolve_precision(precision, self.device)
        self.compile = compile
        self.model: nn.Module | None = None
        self.base: dict[str, Tensor] = {}  # W0 in its storage dtype, read-only by convention
        self.backbone: BackboneRef | None = None
        self.current: VersionRef | None = None
        self.class_names: list[str] = []
        self.flat: FlatWeights | None = None
        self._plans: PlanCache | None = None
        self._live: _Entry | None = None  # what the buffer holds besides W0
        self.cache = cache if cache is not None else DeltaCache(cache_size)
        self._features: Callable[[Tensor], Tensor] | None = None

    # -- loading ---------------------------------------------------------------------------

    def load_backbone(self, backbone_id: int) -> None:
        """Load the backbone (W0 on the device) before any delta; MgrError if this switcher
        holds another one."""
        self._ensure_backbone(backbone_id)

    def _ensure_backbone(self, backbone_id: int) -> None:
        if self.backbone is not None:
            if self.backbone.id != backbone_id:
                raise MgrError(
                    f"this switcher holds backbone {self.backbone.spec} "
                    f"(weights {self.backbone.content_hash[:12]}); the task is bound to another "
                    "backbone, and all tasks switched here must share one"
                )
            return
        from manager.registry.backbones import load_backbone

        with self.catalog.session(write=False) as s:
            row = s.get(Backbone, backbone_id)
            if row is None:
                raise NotFound(f"backbone {backbone_id} is not in the catalog")
            ref = BackboneRef.of(row)
            model = load_backbone(self.home, row, num_classes=0)
        model = model.eval().to(self.device)
        for p in model.parameters():
            p.requires_grad_(False)
        self.base = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.to(self.dtype)
        self.flat = FlatWeights.adopt(model, list(self.base))
        self._plans = PlanCache(self.flat, self.base)
        self.model, self.backbone = model, ref

    def _load(self, ref: VersionRef) -> _Entry:
        hit = self.cache.get(ref)
        if hit is not None:
            return hit
        assert self.backbone is not None and self._plans is not None
        shapes = {n: t.shape for n, t in self.base.items()}
        delta = load_verified(
            self.store, ref, self.backbone.spec, self.backbone.content_hash, shapes
        )
        body, head = split_head(delta, self.base)
        entry = _Entry(body, head, self._plans.plan(body))
        self.cache.put(ref, entry)
        return entry

    def delta(self, ref: VersionRef) -> Delta:
        """The version's whole delta, checked and held by the cache (the backbone loaded)."""
        self._ensure_backbone(ref.backbone_id)  # type: ignore[arg-type]
        return self._load(ref).delta

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
                class_names = classes_of(s, target.id)  # the version's own class set
        if target == self.current:
            return False
        if target is None and self.model is None:
            return False
        if target is not None:
            self._ensure_backbone(target.backbone_id)
        new = self._load(target) if target is not None else None  # verified before any write
        self._set_head(new.body.meta.num_classes if new is not None else 0, new.head if new else {})
        assert self.flat is not None
        fused_switch(
            self.flat.flat, self._live.plan if self._live else None, new.plan if new else None
        )
        self._live, self.current, self.class_names = new, target, class_names
        return True

    @torch.no_grad()
    def _set_head(self, num_classes: int, head: dict[str, Tensor]) -> None:
        """Resize the classifier if needed and set it; undone if the delta's head does not fit."""
        from manager.arch import head_names

        model = self.model
        saved = {h: model.get_submodule(h) for h in head_names(model) if hasattr(model, h)}
        saved_classes = getattr(model, "num_classes", None)
        if saved_classes != num_classes:
            with torch.random.fork_rng(devices=[]):  # timm re-initialises the new head
                model.reset_classifier(num_classes)
            model.get_classifier().to(self.device, self.dtype)  # the rest stays where it is
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
            raise Conflict("no backbone loaded yet: switch to a task first")
        dc = data_config(self.model)
        return eval_transform(dc["img_size"], dc["mean"], dc["std"])

    @torch.inference_mode()
    def predict(self, images: Tensor | Sequence) -> Tensor:
        """Class probabilities ``(batch, classes)`` of the live task.

        ``images``: a normalised batch ``(B, 3, H, W)``, or PIL images (transformed here).
        """
        if self.current is None or self.model is None:
            raise Conflict("no task is live: switch to one first")
        if not isinstance(images, Tensor):
            tf = self.transform()
            images = torch.stack([tf(im) for im in images])
        return self.logits(images).float().softmax(dim=-1)

    def logits(self, images: Tensor) -> Tensor:
        """Logits of the live task for a normalised batch (the compiled path when asked)."""
        if self.current is None or self.model is None:
            raise Conflict("no task is live: switch to one first")
        x = images.to(self.device, self.dtype)
        with torch.inference_mode():
            if not self.compile:
                return self.model(x)
            if self._features is None:
                model = self.model

                def features(x: Tensor) -> Tensor:
                    return model.forward_head(model.forward_features(x), pre_logits=True)

                self._features = torch.compile(features)
            # The head stays outside the compiled graph: its size changes with the task.
            return self.model.get_classifier()(self._features(x))

    def close(self) -> None:
        if self._own_catalog:
            self.catalog.close()

    def __enter__(self) -> Switcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
