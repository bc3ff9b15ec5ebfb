"""The fused exact switch: a handful of kernels per switch, whatever the depth.

`apply`/`restore` (``apply.py``) walk the delta layer by layer and launch a few strided-view
kernels per layer: fine on a CPU, but on a GPU a ViT-B switch becomes ~100 tiny launches. Here
everything a switch needs is computed once per (task, device):

* the live weights live in one flat buffer (`FlatWeights`: every adapted tensor is a view of it);
* a task's `SwitchPlan` holds one flat index of every position its delta writes (the union support
  of each layer, whole tensors in full), W0's values there, and the values to write there,
  ``W0 + dW`` computed once with the same operation `apply` uses (so the bits are the same).

A switch is then ``flat.index_copy_(index_A, w0_A)`` (restore A; skipped when B writes the very
same positions) and ``flat.index_copy_(index_B, values_B)``: two kernels, never a subtraction, and
idempotent. Tensors the backbone lacks (a task's head) are not in the plan: the caller sets them.
Plans of deltas with one structure share their index and W0 values (`PlanCache`). The buffer may
be in a lower precision than W0 (bf16 serving of float32 weights): values are computed in W0's
dtype and cast once, so the buffer always equals the cast of the exact merge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from manager.delta.apply import check_targets
from manager.delta.delta import ConsolidatorLayer, Delta, DenseLayer, LoRALayer
from manager.delta.structure import Shape, Structure, positions, union_plan
from manager.errors import MgrError


@lru_cache(maxsize=256)
def union_positions(shape: Shape, structure: Structure) -> Tensor:
    """Flat positions in ``W.view(-1)`` of a layer's union support, in stored-values order."""
    parts = [
        positions(shape, seg.g, seg.shuffle) if seg.index is None else seg.index
        for seg in union_plan(shape, structure)
    ]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)


class FlatWeights:
    """Named tensors that are views of one contiguous buffer (one dtype, one device).

    ``adopt(module, names)`` moves a module's parameters into the buffer in place of their own
    storage: the ``Parameter`` objects stay the same (a compiled graph keeps them), only their data
    now lives in ``flat``.
    """

    def __init__(self, shapes: Mapping[str, torch.Size], dtype: torch.dtype, device: torch.device):
        self.offsets: dict[str, tuple[int, int]] = {}
        n = 0
        for name, shape in shapes.items():
            numel = int(torch.Size(shape).numel())
            self.offsets[name] = (n, numel)
            n += numel
        self.shapes = {k: torch.Size(v) for k, v in shapes.items()}
        self.flat = torch.empty(n, dtype=dtype, device=device)

    def view(self, name: str) -> Tensor:
        start, numel = self.offsets[name]
        return self.flat[start : start + numel].view(self.shapes[name])

    def views(self) -> dict[str, Tensor]:
        return {n: self.view(n) for n in self.offsets}

    @classmethod
    @torch.no_grad()
    def adopt(cls, module: nn.Module, names: Iterable[str]) -> FlatWeights:
        """Move ``module``'s parameters ``names`` into one buffer (values kept)."""
        params = dict(module.named_parameters())
        chosen = {n: params[n] for n in names}
        dtypes = {p.dtype for p in chosen.values()}
        devices = {p.device for p in chosen.values()}
        if len(dtypes) != 1 or len(devices) != 1:
            raise MgrError("a fused switch needs every adapted tensor in one dtype, on one device")
        fw = cls({n: p.shape for n, p in chosen.items()}, dtypes.pop(), devices.pop())
        for n, p in chosen.items():
            v = fw.view(n)
            v.copy_(p)
            p.data = v
        return fw


@dataclass(frozen=True)
class SwitchPlan:
    """Everything one delta's switch writes, on the live buffer's device and dtype."""

    index: Tensor  # int64 positions in the flat buffer
    w0: Tensor  # W0 at those positions (what a restore writes)
    values: Tensor  # W0 + dW at those positions (what an apply writes)
    key: tuple  # equal keys: the same positions (restoring before applying is moot)


class PlanCache:
    """Builds `SwitchPlan`s for one `FlatWeights` and W0; shares index and W0 per structure."""

    def __init__(self, flat: FlatWeights, base: Mapping[str, Tensor]):
        self.flat = flat
        self.base = base
        self._shared: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _layout(self, delta: Delta) -> tuple:
        """What fixes the positions a delta writes (its structure and tensor names)."""
        parts = []
        for name, lay in sorted(delta.layers.items()):
            branches = lay.branches if isinstance(lay, ConsolidatorLayer) else lay.kind
            parts.append((name, branches))
        whole = tuple(sorted(n for n in delta.whole if n in self.flat.offsets))
        return (tuple(parts), whole)

    @torch.no_grad()
    def plan(self, delta: Delta) -> SwitchPlan:
        """The delta's plan (raises MgrError, before anything is written, if it does not fit)."""
        fw, dev, dt = self.flat, self.flat.flat.device, self.flat.flat.dtype
        views = fw.views()
        body = {n: t for n, t in delta.whole.items() if n in fw.offsets}
        check_targets(views, self.base, Delta(delta.layers, body, delta.meta))
        for name in delta.layers:
            if name not in fw.offsets:
                raise MgrError(f"the delta adapts {name}, which the live weights do not hold")
        key = self._layout(delta)
        shared = self._shared.get(key)
        idx_parts, val_parts, w0_parts = [], [], []
        for name, lay in sorted(delta.layers.items()):
            start, numel = fw.offsets[name]
            base = self.base[name]
            # W0 + dW in W0's own dtype (what `apply` computes), then cast to the buffer's: a
            # low-precision buffer holds exactly the cast of the exact merge.
            wt = base.dtype
            if isinstance(lay, ConsolidatorLayer):
                pos = union_positions(tuple(lay.shape), lay.branches)
                b = base.reshape(-1)[pos.to(base.device)].to(dev)
                vals = torch.add(b, lay.values.to(dev, wt))
            elif isinstance(lay, DenseLayer):
                pos = torch.arange(numel)
                b = base.reshape(-1).to(dev)
                vals = torch.add(base.to(dev), lay.values.to(dev, wt)).reshape(-1)
            elif isinstance(lay, LoRALayer):
                pos = torch.arange(numel)
                b = base.reshape(-1).to(dev)
                out = torch.empty(base.shape, dtype=wt, device=dev)
                torch.addmm(base.to(dev), lay.B.to(dev, wt), lay.A.to(dev, wt), out=out)
                vals = out.reshape(-1)
            else:
                raise MgrError(f"cannot apply a layer delta of kind {getattr(lay, 'kind', '?')!r}")
            idx_parts.append(pos + start)
            w0_parts.append(b.to(dt))
            val_parts.append(vals.to(dt))
        for name in key[1]:
            start, numel = fw.offsets[name]
            idx_parts.append(torch.arange(start, start + numel))
            w0_parts.append(self.base[name].reshape(-1).to(dev, dt))
            # Set as `apply` sets it: the stored value in W0's dtype, then the buffer's.
            whole = delta.whole[name].reshape(-1).to(dev, self.base[name].dtype)
            val_parts.append(whole.to(dt))
        values = torch.cat(val_parts) if val_parts else torch.empty(0, dtype=dt, device=dev)
        if shared is None:
            index = torch.cat(idx_parts).to(dev) if idx_parts else torch.empty(0, dtype=torch.long)
            w0 = torch.cat(w0_parts) if w0_parts else torch.empty(0, dtype=dt, device=dev)
            shared = self._shared[key] = (index, w0)
        return SwitchPlan(shared[0], shared[1], values, key)


@torch.no_grad()
def fused_switch(flat: Tensor, old: SwitchPlan | None, new: SwitchPlan | None) -> None:
    """Restore ``old``'s positions from W0 (unless ``new`` writes the same ones), apply ``new``.

    Exact and idempotent, like `apply.switch`: two ``index_copy_`` kernels at most.
    """
    if old is not None and (new is None or old.key != new.key):
        flat.index_copy_(0, old.index, old.w0)
    if new is not None:
        flat.index_copy_(0, new.index, new.values)
