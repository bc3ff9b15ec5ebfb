"""The model side of the server: one backbone, resident deltas, merged and mixed-task batches.

Only the scheduler's worker thread calls an `Engine` (torch state is never shared between
threads). A batch of one task runs merged: a fused exact switch (``Switcher``) then the plain
model. A batch of several tasks either switches between them or runs once through a
``MultiTaskModel`` over W0 (Consolidator and whole-only deltas), whichever the measured
`CostModel` says is faster.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from manager.adapters.inject import head_name, norm_params, target_modules
from manager.adapters.multitask import MultiTaskModel
from manager.catalog import Catalog, tasks
from manager.catalog.models import VERSION_READY
from manager.catalog.refs import VersionRef
from manager.delta.delta import ConsolidatorLayer, Delta
from manager.errors import MgrError
from manager.home import Home
from manager.serve.costs import CostModel, fit_line
from manager.serve.metrics import Metrics
from manager.switch.switcher import Switcher

Key = tuple[int, str]  # (version id, content hash): one artifact's bytes


def key_of(ref: VersionRef) -> Key:
    return (ref.id, ref.content_hash)


class ResidentSwitcher(Switcher):
    """A `Switcher` whose deltas stay resident in an LRU of ``resident`` tasks; pinned tasks'
    deltas are never evicted. Counts cache hits and misses."""

    def __init__(
        self,
        home: Home,
        catalog: Catalog,
        *,
        device: str,
        precision: str | None,
        resident: int,
        pins: Sequence[str],
        metrics: Metrics,
    ):
        # The parent's own bound is lifted: eviction happens here, pin-aware.
        super().__init__(home, catalog, device=device, precision=precision, cache_size=1 << 30)
        self.resident = resident
        self.pins = set(pins)
        self.metrics = metrics
        self.tasks_of: dict[Key, str] = {}

    def _load(self, ref: VersionRef):
        key = key_of(ref)
        hit = key in self._cache
        entry = super()._load(ref)
        self.metrics.add("cache_hits" if hit else "cache_misses")
        self.tasks_of[key] = ref.task
        if ref.task in self.pins:  # a pinned task keeps its newest loaded version only
            for old in [k for k, t in self.tasks_of.items() if t == ref.task and k != key]:
                self._evict(old)
        unpinned = [k for k in self._cache if self.tasks_of.get(k) not in self.pins]
        for old in unpinned[: max(0, len(unpinned) - self.resident)]:  # LRU first
            self._evict(old)
        return entry

    def _evict(self, key: Key) -> None:
        self._cache.pop(key, None)
        self.tasks_of.pop(key, None)

    def load_delta(self, ref: VersionRef) -> tuple[Delta, bool]:
        """The version's whole delta (checked, resident) and whether a mixed batch can serve it."""
        entry = self._load(ref)
        delta = Delta(entry.body.layers, {**entry.body.whole, **entry.head}, entry.body.meta)
        return delta, self._mixable(delta)

    def _mixable(self, delta: Delta) -> bool:
        # MultiTaskModel adds Consolidator layers, target biases, LayerNorm affines and the head;
        # a delta writing anything else (dense or LoRA layers, other tensors) is served merged.
        if not all(isinstance(lay, ConsolidatorLayer) for lay in delta.layers.values()):
            return False
        assert self.model is not None
        head = head_name(self.model)
        allowed = {f"{n}.bias" for n, _ in target_modules(self.model)} | set(
            norm_params(self.model)
        )
        allowed |= {f"{head}.weight", f"{head}.bias"}
        return set(delta.whole) <= allowed and f"{head}.weight" in delta.whole

    def load_backbone(self, backbone_id: int) -> None:
        """Load the backbone (W0 on the device) before any delta."""
        self._ensure_backbone(backbone_id)

    def resident_tasks(self) -> set[str]:
        return set(self.tasks_of.values())


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
    ):
        self.catalog = catalog
        self.metrics = metrics or Metrics()
        self.sw = ResidentSwitcher(
            home,
            catalog,
            device=device,
            precision=precision,
            resident=resident,
            pins=pins,
            metrics=self.metrics,
        )
        self.max_batch = max_batch
        self.costs: CostModel | None = None
        self.transform: Callable | None = None
        self._mixed: MultiTaskModel | None = None
        self._mixed_keys: list[Key] = []
        self._w0_memo: dict[int, nn.Parameter] | None = None

    @property
    def device(self) -> torch.device:
        return self.sw.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sw.dtype

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
        candidates = self.active_refs(prefer=self.sw.pins)
        if candidates:
            t0 = time.perf_counter()
            try:
                self.sw.load_backbone(candidates[0].backbone_id)
            except MgrError as exc:
                warn(f"backbone of {candidates[0].label}: {exc}")
            else:
                spec = self.sw.backbone.spec if self.sw.backbone else "?"
                dtype = str(self.dtype).removeprefix("torch.")
                took = time.perf_counter() - t0
                progress(f"backbone: {spec} on {self.device} ({dtype}) in {took:.2f} s")
        else:
            progress("backbone: not loaded yet (no servable task)")
        t0 = time.perf_counter()
        for ref in candidates:
            # Pinned tasks all; besides them only what the measurements need: two tasks, one
            # of them mixable if any is (the rest load on first use).
            if ref.task not in self.sw.pins and len(refs) >= 2 and (mixable or len(refs) >= 8):
                break
            try:
                self.sw.switch(ref.task, ref.number)
                mixable = self.sw.load_delta(ref)[1] or mixable
                refs.append(ref)
            except MgrError as exc:
                warn(f"{ref.label}: {exc}")
        for name in sorted(self.sw.pins - {r.task for r in refs}):
            warn(f"pinned task {name!r} has no servable active version")
        if candidates:
            progress(
                f"deltas: {len(refs)} resident ({', '.join(r.label for r in refs) or 'none'}) "
                f"in {time.perf_counter() - t0:.2f} s"
            )
        if refs:
            t0 = time.perf_counter()
            costs = self.calibrate(refs[:8])
            progress(
                f"calibration: switch {costs.switch * 1e3:.2f} ms, forward "
                f"{costs.merged(1) * 1e3:.1f} ms/1 {costs.merged(self.max_batch) * 1e3:.1f} "
                f"ms/{self.max_batch} in {time.perf_counter() - t0:.2f} s"
            )

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
        """Measure a switch, merged and mixed forwards on this device (medians)."""
        sw = self.sw
        self.transform = sw.transform()
        size = self.transform(_blank()).shape
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
        mixable = [r for r in refs if sw.load_delta(r)[1]]
        if mixable:
            t0 = time.perf_counter()
            self._build_mixed(mixable)
            costs.build = time.perf_counter() - t0
            ids1 = torch.zeros(1, dtype=torch.long)
            idsn = torch.arange(n_big) % len(mixable)
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
        if self.transform is None:
            self.transform = self.sw.transform()
        return torch.stack([self.transform(im) for im in batch])

    @torch.inference_mode()
    def run_merged(self, ref: VersionRef, x: Tensor) -> tuple[Output, bool]:
        """Switch to ``ref`` (fused, exact) and classify ``x``; returns (output, switched)."""
        switched = False
        if self.sw.current != ref:
            switched = self.sw.switch(ref.task, ref.number)
            if self.sw.current != ref:  # the catalog moved between the request and now
                raise MgrError(f"{ref.label} is no longer servable; retry")
            self.metrics.add("switches", int(switched))
        if self.transform is None:
            self.transform = self.sw.transform()
        chunks = [
            self.sw.logits(x[i : i + self.max_batch]).float().softmax(-1).cpu()
            for i in range(0, len(x), self.max_batch)
        ]
        return Output(torch.cat(chunks), ref, list(self.sw.class_names)), switched

    def mixable(self, ref: VersionRef) -> bool:
        """Whether ``ref`` can join a mixed batch (loads and checks its delta: MgrError if bad)."""
        if self.sw.model is None:
            self.sw.switch(ref.task, ref.number)  # loads the backbone
        return self.sw.load_delta(ref)[1]

    def mixed_needs_build(self, refs: Sequence[VersionRef]) -> bool:
        return self._mixed is None or any(key_of(r) not in self._mixed_keys for r in refs)

    @torch.inference_mode()
    def run_mixed(self, refs: Sequence[VersionRef], xs: Sequence[Tensor]) -> list[Tensor]:
        """Classify each ``xs[i]`` under ``refs[i]`` in one unmerged batch; probabilities each."""
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
        sw = self.sw
        assert sw.model is not None
        keys = [key_of(r) for r in refs]
        deltas = [sw.load_delta(r)[0] for r in refs]
        room = max(0, sw.resident - len(keys))
        for k in reversed(self._mixed_keys):  # the old set's most recent first
            if room == 0:
                break
            entry = sw._cache.get(k)
            if k in keys or entry is None:
                continue
            keys.append(k)
            deltas.append(
                Delta(entry.body.layers, {**entry.body.whole, **entry.head}, entry.body.meta)
            )
            room -= 1
        self._mixed = None  # the old one's tables are freed before the new ones are made
        self._mixed = MultiTaskModel(self._w0_model(), deltas).eval()
        self._mixed_keys = keys
        self.metrics.add("mixed_builds")

    def _w0_model(self) -> nn.Module:
        """A fresh module tree sharing W0's tensors (no copy in the serving precision)."""
        sw = self.sw
        assert sw.model is not None
        if self._w0_memo is None:
            params = dict(sw.model.named_parameters())
            self._w0_memo = {
                id(params[n]): nn.Parameter(t.to(self.device, self.dtype), requires_grad=False)
                for n, t in sw.base.items()
            }
        # deepcopy with a memo maps each backbone parameter to its W0 twin instead of copying.
        return copy.deepcopy(sw.model, memo=dict(self._w0_memo))

    def close(self) -> None:
        self.sw.close()


def _blank():
    from PIL import Image

    return Image.new("RGB", (8, 8))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
