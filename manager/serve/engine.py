"""The model side of the server: backbones, resident deltas, merged and mixed-task batches.

Each backbone the served tasks are bound to gets its own `Switcher` with a `ResidentCache`, loaded
on first use;
``max_memory`` bounds what they hold together (W0, its serving copy, resident deltas): the least
recently used backbone without a pinned task is evicted to make room, and a backbone that cannot
fit is a 503. Only the scheduler's worker thread calls an `Engine` (torch state is never shared
between threads). A batch of one task runs merged: a fused exact switch (``Switcher``) then the
plain model. A batch of several tasks either switches between them or runs once through a
``MultiTaskModel`` over W0 (Consolidator and whole-only deltas), whichever the measured
`CostModel` says is faster.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from manager.adapters.inject import head_name, norm_params, target_modules
from manager.adapters.multitask import MultiTaskModel
from manager.catalog import Catalog, tasks
from manager.catalog.models import VERSION_READY
from manager.catalog.refs import VersionRef
from manager.delta.delta import ConsolidatorLayer, Delta
from manager.errors import Busy, Conflict, MgrError, NotFound
from manager.home import Home
from manager.serve.costs import CostModel, fit_line
from manager.serve.errors import fresh
from manager.serve.metrics import Metrics
from manager.switch.switcher import DeltaCache, Key, Switcher, key_of


class ResidentCache(DeltaCache):
    """The server's cache policy: deltas stay resident in an LRU of ``resident`` tasks; pinned
    tasks' deltas are never evicted (a pinned task keeps its newest loaded version). Counts hits
    and misses."""

    def __init__(self, resident: int, pins: Sequence[str], metrics: Metrics):
        super().__init__(size=resident)
        self.resident = resident
        self.pins = set(pins)
        self.metrics = metrics
        self.misses = 0  # artifacts read: the bytes held change only then

    def get(self, ref: VersionRef):  # type: ignore[no-untyped-def]
        entry = super().get(ref)
        self.metrics.add("cache_hits" if entry is not None else "cache_misses")
        self.misses += entry is None
        return entry

    def trim(self, loaded: VersionRef) -> None:
        key = key_of(loaded)
        if loaded.task in self.pins:  # a pinned task keeps its newest loaded version only
            for old in [k for k, t in self.tasks_of.items() if t == loaded.task and k != key]:
                self.pop(old)
        unpinned = [k for k in self.entries if self.tasks_of.get(k) not in self.pins]
        for old in unpinned[: max(0, len(unpinned) - self.resident)]:  # LRU first
            self.pop(old)


def can_mix(sw: Switcher, delta: Delta) -> bool:
    """Whether a mixed batch can serve ``delta`` on ``sw``'s backbone.

    MultiTaskModel adds Consolidator layers, target biases, LayerNorm affines and the head; a
    delta writing anything else (dense or LoRA layers, other tensors) is served merged.
    """
    if not all(isinstance(lay, ConsolidatorLayer) for lay in delta.layers.values()):
        return False
    assert sw.model is not None
    head = head_name(sw.model)
    allowed = {f"{n}.bias" for n, _ in target_modules(sw.model)} | set(norm_params(sw.model))
    allowed |= {f"{head}.weight", f"{head}.bias"}
    return set(delta.whole) <= allowed and f"{head}.weight" in delta.whole


@dataclass
class Output:
    """One group's answer: probabilities ``(n, classes)`` on the CPU and what produced them."""

    probs: Tensor
    ref: VersionRef
    class_names: list[str]


class Engine:
    """One backbone on one device; serves merged and mixed-task batches (see the module doc)."""

    def __init__(
        self,
        home: Home,
        catalog: Catalog,
        *,
        device: str = "cpu",
        precision: str | None = None,
        resident: int = 8,
        pins: Sequence[str] = (),
        max_batch: int = 64,
        metrics: Metrics | None = None,
        max_memory: int | None = None,
    ):
        self.home = home
        self.catalog = catalog
        self.metrics = metrics or Metrics()
        self.device_name, self.precision, self.resident = device, precision, resident
        self.pins = set(pins)
        self.max_memory = max_memory
        self.switchers: OrderedDict[int, Switcher] = OrderedDict()  # by backbone id, LRU
        self.broken: dict[int, MgrError] = {}  # backbones that failed to load, and why
        self._transforms: dict[int, Callable] = {}
        self._empty = self._switcher()
        self.max_batch = max_batch
        self.costs: CostModel | None = None
        self._mixed: MultiTaskModel | None = None
        self._mixed_keys: list[Key] = []
        self._mixed_backbone: int | None = None
        self._w0_memo: dict[int, dict[int, nn.Parameter]] = {}

    def _switcher(self) -> Switcher:
        """A switcher over one backbone, its deltas resident as the server's policy says."""
        cache = ResidentCache(self.resident, tuple(self.pins), self.metrics)
        return Switcher(
            self.home, self.catalog, device=self.device_name, precision=self.precision, cache=cache
        )

    @staticmethod
    def cache(sw: Switcher) -> ResidentCache:
        """``sw``'s resident-delta cache (every switcher here has one)."""
        assert isinstance(sw.cache, ResidentCache)
        return sw.cache

    @property
    def sw(self) -> Switcher:
        """The most recently used backbone's switcher (an empty one before any)."""
        return next(reversed(self.switchers.values()), self._empty)

    @property
    def transform(self) -> Callable | None:
        return self._transforms.get(self.sw.backbone.id) if self.sw.backbone else None

    @property
    def device(self) -> torch.device:
        return self._empty.device

    @property
    def dtype(self) -> torch.dtype:
        return self._empty.dtype

    # -- backbones and memory ----------------------------------------------------------------

    def use(self, backbone_id: int | None) -> Switcher:
        """The switcher of ``backbone_id``, loaded (evicting others within ``max_memory``) and
        made the most recent; Busy "cannot fit ..." when it cannot be held now."""
        if backbone_id is None:
            raise Conflict("the version is not bound to a backbone")
        sw = self.switchers.get(backbone_id)
        if sw is not None:
            self.switchers.move_to_end(backbone_id)
            return sw
        if backbone_id in self.broken:
            raise fresh(self.broken[backbone_id])
        need = self._estimate(backbone_id)
        self._make_room(need, backbone_id)
        sw = self._switcher()
        try:
            sw.load_backbone(backbone_id)
        except MgrError as exc:
            sw.close()
            if not isinstance(exc, Busy):  # no room now may be room later; a bad file stays bad
                self.broken[backbone_id] = exc
            raise
        self.switchers[backbone_id] = sw
        self._transforms[backbone_id] = sw.transform()
        self._make_room(0, backbone_id)  # measured now: trim the others if the estimate was low
        self.update_memory()
        return sw

    def _estimate(self, backbone_id: int) -> int:
        """Bytes a backbone will hold: its W0 (storage dtype) plus the serving copy."""
        from manager.catalog.models import Backbone

        with self.catalog.session(write=False) as s:
            row = s.get(Backbone, backbone_id)
            size = int(row.bytes or 0) if row is not None else 0
        itemsize = torch.empty((), dtype=self.dtype).element_size()
        return size + size * itemsize // 4

    def resident_bytes(self, backbone_id: int) -> int:
        """Bytes held for a loaded backbone: W0, the serving model, resident deltas, and the
        mixed-task model's own tables when it is built on this backbone."""
        sw = self.switchers.get(backbone_id)
        if sw is None or sw.model is None:
            return 0
        seen: set[int] = set()

        def nbytes(tensors: Iterable[Tensor]) -> int:
            total = 0
            for t in tensors:
                key = t.data_ptr()
                if key not in seen:
                    seen.add(key)
                    total += t.numel() * t.element_size()
            return total

        n = nbytes(sw.base.values()) + nbytes(sw.model.parameters()) + nbytes(sw.model.buffers())
        for entry in sw.cache.entries.values():
            n += nbytes(t for lay in entry.body.layers.values() for t in lay.tensors().values())
            n += nbytes(entry.body.whole.values()) + nbytes(entry.head.values())
        if self._mixed is not None and self._mixed_backbone == backbone_id:
            n += nbytes(self._mixed.parameters()) + nbytes(self._mixed.buffers())
        return n

    def _make_room(self, need: int, keep: int) -> None:
        if self.max_memory is None:
            return
        held = {b: self.resident_bytes(b) for b in self.switchers}
        for b in list(self.switchers):  # least recently used first
            if sum(held.values()) + need <= self.max_memory:
                return
            if b == keep or self.switchers[b].cache.tasks() & self.pins:
                continue
            self.evict(b)
            held.pop(b)
        total = sum(held.values()) + need
        if total > self.max_memory and keep in self.switchers:
            self._trim(keep)  # its own mixed tables and idle deltas go before it does
            held[keep] = self.resident_bytes(keep)
            total = sum(held.values()) + need
        if total > self.max_memory:
            if keep in self.switchers and need == 0:  # loaded, alone it does not fit: undo
                self.evict(keep)
            mb = 2**20
            raise Busy(
                f"cannot fit backbone {self._spec(keep)} in the memory bound of "
                f"{self.max_memory / mb:.1f} MB: "
                f"{total / mb:.1f} MB needed with what pinned tasks hold; retry later",
                hint="or raise --max-memory",
            )

    def _spec(self, backbone_id: int) -> str:
        from manager.catalog.models import Backbone

        with self.catalog.session(write=False) as s:
            row = s.get(Backbone, backbone_id)
            return row.spec if row is not None else str(backbone_id)

    def _trim(self, backbone_id: int) -> None:
        """Drop a backbone's mixed-task model and the resident deltas of tasks neither live nor
        pinned (all reload on demand)."""
        sw = self.switchers[backbone_id]
        if self._mixed_backbone == backbone_id:
            self._mixed, self._mixed_keys, self._mixed_backbone = None, [], None
        live = key_of(sw.current) if sw.current is not None else None
        for key in sw.cache:
            if key != live and sw.cache.tasks_of.get(key) not in self.pins:
                sw.cache.pop(key)

    def evict(self, backbone_id: int) -> None:
        """Unload a backbone, its deltas and its mixed-task model."""
        sw = self.switchers.pop(backbone_id, None)
        if sw is None:
            return
        if self._mixed_backbone == backbone_id:
            self._mixed, self._mixed_keys, self._mixed_backbone = None, [], None
        self._w0_memo.pop(backbone_id, None)
        sw.close()
        sw.model = None
        sw.base = {}
        sw.cache.clear()
        self.metrics.add("backbone_evictions")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.update_memory()

    def update_memory(self) -> None:
        self.metrics.set_backbones({self.label(b): self.resident_bytes(b) for b in self.switchers})

    def label(self, backbone_id: int) -> str:
        sw = self.switchers.get(backbone_id)
        if sw is not None and sw.backbone is not None:
            return f"{sw.backbone.spec}@{sw.backbone.content_hash[:12]}"
        return str(backbone_id)

    def is_current(self, ref: VersionRef) -> bool:
        """Whether ``ref`` is switched in on its backbone now."""
        sw = self.switchers.get(ref.backbone_id) if ref.backbone_id is not None else None
        return sw is not None and sw.current == ref

    def transform_for(self, backbone_id: int) -> Callable:
        """The eval transform of a backbone (its own input size), without loading its weights."""
        found = self._transforms.get(backbone_id)
        if found is not None:
            return found
        from manager.backbone import build_backbone
        from manager.catalog.models import Backbone
        from manager.datasets.transforms import data_config, eval_transform

        with self.catalog.session(write=False) as s:
            row = s.get(Backbone, backbone_id)
            if row is None:
                raise NotFound(f"backbone {backbone_id} is not in the catalog")
            spec = row.spec
        with torch.device("meta"):  # shapes and configs only: no weights read or allocated
            model = build_backbone(spec, "random", num_classes=0)
        dc = data_config(model)
        found = eval_transform(dc["img_size"], dc["mean"], dc["std"])
        self._transforms[backbone_id] = found
        return found

    # -- start-up --------------------------------------------------------------------------

    def start(
        self,
        warn: Callable[[str], None] = lambda m: None,
        progress: Callable[[str], None] = lambda m: None,
    ) -> None:
        """Load the backbone, the pinned tasks, and measure the cost model.

        Each phase is reported through ``progress`` with its time. Tasks that fail to load are
        reported through ``warn`` and skipped: they answer 5xx when asked for, and the others
        are served.
        """
        refs: list[VersionRef] = []
        mixable = False
        candidates = self.active_refs(prefer=self.pins)
        first = candidates[0].backbone_id if candidates else None
        if candidates:
            t0 = time.perf_counter()
            try:
                sw = self.use(first)
            except MgrError as exc:
                warn(f"backbone of {candidates[0].label}: {exc}")
            else:
                spec = sw.backbone.spec if sw.backbone else "?"
                dtype = str(self.dtype).removeprefix("torch.")
                took = time.perf_counter() - t0
                progress(f"backbone: {spec} on {self.device} ({dtype}) in {took:.2f} s")
        else:
            progress("backbone: not loaded yet (no servable task)")
        t0 = time.perf_counter()
        for ref in candidates:
            # Pinned tasks all (on any backbone); besides them only what the measurements need,
            # on the first backbone: two tasks, one of them mixable if any is (the rest load on
            # first use).
            pinned = ref.task in self.pins
            if not pinned and (
                ref.backbone_id != first or (len(refs) >= 2 and (mixable or len(refs) >= 8))
            ):
                continue
            try:
                sw = self.use(ref.backbone_id)
                sw.switch(ref.task, ref.number)
                mixable = (can_mix(sw, sw.delta(ref)) and ref.backbone_id == first) or mixable
                refs.append(ref)
            except MgrError as exc:
                warn(f"{ref.label}: {exc}")
        for name in sorted(self.pins - {r.task for r in refs}):
            warn(f"pinned task {name!r} has no servable active version")
        if candidates:
            progress(
                f"deltas: {len(refs)} resident ({', '.join(r.label for r in refs) or 'none'}) "
                f"on {len(self.switchers)} backbone(s) in {time.perf_counter() - t0:.2f} s"
            )
        measured = [r for r in refs if r.backbone_id == first][:8]
        if measured:
            t0 = time.perf_counter()
            costs = self.calibrate(measured)
            progress(
                f"calibration: switch {costs.switch * 1e3:.2f} ms, forward "
                f"{costs.merged(1) * 1e3:.1f} ms/1 {costs.merged(self.max_batch) * 1e3:.1f} "
                f"ms/{self.max_batch} in {time.perf_counter() - t0:.2f} s"
            )
        self.update_memory()

    def servable(self) -> dict[str, str | None]:
        """Every task: None if the server can answer it, else why not (one line)."""
        from manager.catalog.models import Backbone

        out: dict[str, str | None] = {}
        with self.catalog.session(write=False) as s:
            for t in tasks.list_tasks(s):
                v = t.active_version
                if v is None:
                    out[t.name] = "no active version: train or promote one"
                elif v.status != VERSION_READY:
                    out[t.name] = f"its active version {v.number} is {v.status}"
                elif t.backbone_id is None:
                    out[t.name] = "not bound to a backbone"
                elif t.backbone_id in self.broken:
                    out[t.name] = str(self.broken[t.backbone_id])
                elif s.get(Backbone, t.backbone_id) is None:
                    out[t.name] = "its backbone is not in the catalog"
                else:
                    out[t.name] = None
        return out

    def active_refs(self, prefer: set[str] = frozenset()) -> list[VersionRef]:  # type: ignore[assignment]
        """Every task's active ready version, ``prefer``'d tasks first."""
        with self.catalog.session(write=False) as s:
            out = [
                VersionRef.of(t.active_version)
                for t in tasks.list_tasks(s)
                if t.active_version is not None
                and t.active_version.status == VERSION_READY
                and t.backbone_id is not None
            ]
        return sorted(out, key=lambda r: (r.task not in prefer, r.task))

    @torch.inference_mode()
    def calibrate(self, refs: Sequence[VersionRef], repeats: int = 5) -> CostModel:
        """Measure a switch, merged and mixed forwards on this device (medians); ``refs`` share
        one backbone."""
        sw = self.use(refs[0].backbone_id)
        size = self._transforms[refs[0].backbone_id](_blank()).shape
        n_big = max(2, min(self.max_batch, 16))

        def timed(fn: Callable[[], object], n: int = repeats) -> float:
            fn()  # warm-up (allocations, lazy init)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                fn()
                _sync(self.device)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        a = refs[0]
        b = refs[1] if len(refs) > 1 else None

        def flip() -> None:
            sw.switch(a.task, a.number)
            if b is not None:
                sw.switch(b.task, b.number)
            else:
                sw.switch(None)

        switch = timed(flip) / 2
        sw.switch(a.task, a.number)
        x1, xn = torch.randn(1, *size), torch.randn(n_big, *size)
        t1, tn = timed(lambda: sw.logits(x1)), timed(lambda: sw.logits(xn))
        costs = CostModel(switch, *fit_line(1, t1, n_big, tn))
        mixed = [r for r in refs if can_mix(sw, sw.delta(r))]
        if mixed:
            t0 = time.perf_counter()
            self._build_mixed(mixed)
            costs.build = time.perf_counter() - t0
            ids1 = torch.zeros(1, dtype=torch.long)
            idsn = torch.arange(n_big) % len(mixed)
            m1 = timed(lambda: self._mixed_forward(x1, ids1))
            mn = timed(lambda: self._mixed_forward(xn, idsn))
            costs.mixed_fixed, costs.mixed_per_image = fit_line(1, m1, n_big, mn)
        self.costs = costs
        return costs

    # -- serving ---------------------------------------------------------------------------

    def images(self, batch: Tensor | Sequence) -> Tensor:
        """A normalised batch from tensors or PIL images (decoded before the backbone loaded)."""
        if isinstance(batch, Tensor):
            return batch
        transform = self.transform or self.sw.transform()
        return torch.stack([transform(im) for im in batch])

    @torch.inference_mode()
    def run_merged(self, ref: VersionRef, x: Tensor) -> tuple[Output, bool]:
        """Switch to ``ref`` (fused, exact) and classify ``x``; returns (output, switched)."""
        switched = False
        sw = self.use(ref.backbone_id)
        if sw.current != ref:
            misses = self.cache(sw).misses
            switched = sw.switch(ref.task, ref.number)
            if sw.current != ref:  # the catalog moved between the request and now
                raise Busy(f"{ref.label} is no longer servable; retry")
            self.metrics.add("switches", int(switched))
            if self.cache(sw).misses != misses:  # a delta was read: it may have tipped the budget
                self._make_room(0, ref.backbone_id)
                self.update_memory()
        chunks = [
            sw.logits(x[i : i + self.max_batch]).float().softmax(-1).cpu()
            for i in range(0, len(x), self.max_batch)
        ]
        return Output(torch.cat(chunks), ref, list(sw.class_names)), switched

    def mixable(self, ref: VersionRef) -> bool:
        """Whether ``ref`` can join a mixed batch (loads and checks its delta: MgrError if bad)."""
        sw = self.use(ref.backbone_id)
        return can_mix(sw, sw.delta(ref))

    def mixed_needs_build(self, refs: Sequence[VersionRef]) -> bool:
        return (
            self._mixed is None
            or self._mixed_backbone != refs[0].backbone_id
            or any(key_of(r) not in self._mixed_keys for r in refs)
        )

    @torch.inference_mode()
    def run_mixed(self, refs: Sequence[VersionRef], xs: Sequence[Tensor]) -> list[Tensor]:
        """Classify each ``xs[i]`` under ``refs[i]`` in one unmerged batch; probabilities each.

        ``refs`` share one backbone (the scheduler mixes nothing else)."""
        if len({r.backbone_id for r in refs}) != 1:
            raise MgrError("a mixed batch needs one backbone")
        self.use(refs[0].backbone_id)
        if self.mixed_needs_build(refs):
            self._build_mixed(refs)
        assert self._mixed is not None
        index = {k: i for i, k in enumerate(self._mixed_keys)}
        ids = torch.cat(
            [
                torch.full((len(x),), index[key_of(r)], dtype=torch.long)
                for r, x in zip(refs, xs, strict=True)
            ]
        )
        logits = self._mixed_forward(torch.cat(list(xs)), ids)
        probs = logits.float().softmax(-1).cpu()
        out, start = [], 0
        for r, x in zip(refs, xs, strict=True):
            n = self._mixed.num_classes[index[key_of(r)]]
            out.append(probs[start : start + len(x), :n])
            start += len(x)
        return out

    def _mixed_forward(self, x: Tensor, ids: Tensor) -> Tensor:
        assert self._mixed is not None
        return self._mixed(x.to(self.device, self.dtype), ids.to(self.device))

    def _build_mixed(self, refs: Sequence[VersionRef]) -> None:
        """A mixed-task model over ``refs`` plus the resident mixable versions it had (LRU cap)."""
        sw = self.use(refs[0].backbone_id)
        assert sw.model is not None
        keys = [key_of(r) for r in refs]
        deltas = [sw.delta(r) for r in refs]
        room = max(0, self.resident - len(keys))
        if self._mixed_backbone != refs[0].backbone_id:
            self._mixed_keys = []  # another backbone's set: nothing of it carries over
        for k in reversed(self._mixed_keys):  # the old set's most recent first
            if room == 0:
                break
            entry = sw.cache.peek(k)
            if k in keys or entry is None:
                continue
            keys.append(k)
            deltas.append(
                Delta(entry.body.layers, {**entry.body.whole, **entry.head}, entry.body.meta)
            )
            room -= 1
        self._mixed = None  # the old one's tables are freed before the new ones are made
        self._mixed_backbone = None
        self._mixed = MultiTaskModel(self._w0_model(sw), deltas).eval()
        self._mixed_keys = keys
        self._mixed_backbone = refs[0].backbone_id
        self.metrics.add("mixed_builds")
        self.update_memory()

    def _w0_model(self, sw: Switcher) -> nn.Module:
        """A fresh module tree sharing W0's tensors (no copy in the serving precision)."""
        assert sw.model is not None and sw.backbone is not None
        memo = self._w0_memo.get(sw.backbone.id)
        if memo is None:
            params = dict(sw.model.named_parameters())
            memo = {
                id(params[n]): nn.Parameter(t.to(self.device, self.dtype), requires_grad=False)
                for n, t in sw.base.items()
            }
            self._w0_memo[sw.backbone.id] = memo
        # deepcopy with a memo maps each backbone parameter to its W0 twin instead of copying.
        return copy.deepcopy(sw.model, memo=dict(memo))

    def close(self) -> None:
        for sw in self.switchers.values():
            sw.close()
        self._empty.close()


def _blank():
    from PIL import Image

    return Image.new("RGB", (8, 8))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
