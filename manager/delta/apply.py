"""Stage 2: exact switching by writes, never by subtraction.

``live`` and ``base`` map weight names to tensors (a model's parameters, a memory-mapped weights
file, ...); ``live`` is written in place, ``base`` (W0) only read. On each layer's support::

    apply:   W[supp] = W0[supp] + dW        restore: W[supp] = W0[supp]

and whole tensors (biases, LayerNorms, head) are *set*. Any sequence of switches therefore leaves
bit-exact weights, and re-running an interrupted switch finishes it. Work is proportional to the
deltas: supports are touched through strided views of ``W`` and ``W0`` (a cached flat index only
where no view exists); nothing dense is built.

A ``SupportCache`` keeps W0's support values contiguous, so only the live weights are touched in
scattered places (1.5-2.5x faster on ViT-B in our runs).

A whole tensor that ``base`` lacks (typically a task-specific head) is set by ``apply`` but left as
is by ``restore``: the caller owns it (e.g. swaps the head module).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence

import torch
from torch import Tensor

from manager.delta.delta import ConsolidatorLayer, Delta, DenseLayer, LayerDelta, LoRALayer
from manager.delta.structure import covers, gather_union, segments, support_view
from manager.errors import MgrError


def _get(tensors: Mapping[str, Tensor], name: str, what: str) -> Tensor:
    t = tensors.get(name)
    if t is None:
        raise MgrError(f"the {what} weights have no tensor {name!r}")
    return t


def check_targets(
    live: Mapping[str, Tensor], base: Mapping[str, Tensor], delta: Delta, restoring: bool = False
) -> None:
    """Validate every target before writing anything (restoring: only what restore touches)."""
    for name, lay in delta.layers.items():
        for what, t in (("live", _get(live, name, "live")), ("base", _get(base, name, "base"))):
            if tuple(t.shape) != tuple(lay.shape):
                raise MgrError(
                    f"delta layer {name} is {lay.shape[0]}x{lay.shape[1]}, the {what} "
                    f"weight is {'x'.join(map(str, t.shape))}: another backbone?"
                )
            if not t.is_contiguous():
                raise MgrError(f"the {what} weight {name} is not contiguous")
    for name, t in delta.whole.items():
        if restoring and name not in base:
            continue  # restore leaves tensors without a base value (a task head) to the caller
        lt = _get(live, name, "live")
        if lt.shape != t.shape:
            raise MgrError(
                f"delta tensor {name} has shape {tuple(t.shape)}, the live one "
                f"{tuple(lt.shape)} (a head for another number of classes?)"
            )


class SupportCache:
    """W0's values on each layer's union support, gathered once, contiguous, on the live device.

    With it a switch reads W0 contiguously and only the live weights are touched in scattered
    places: about half the memory traffic (ViT-B, g=384: 82,944 rows each cost a cache line per
    tensor). It costs one delta's worth of memory per structure. W0 must not change while cached;
    entries are keyed by the base tensor's address, name, shape and structure.
    """

    def __init__(self) -> None:
        self._values: dict[tuple, Tensor] = {}

    def get(self, name: str, base: Tensor, lay: ConsolidatorLayer, live: Tensor) -> Tensor:
        key = (name, base.data_ptr(), lay.shape, lay.branches, live.device, live.dtype)
        values = self._values.get(key)
        if values is None:
            values = gather_union(base, lay.branches).to(live.device, live.dtype)
            self._values[key] = values
        return values


def _write_layer(
    name: str, live: Tensor, base: Tensor, lay: LayerDelta, add: bool, cache: SupportCache | None
) -> None:
    dev, dt = live.device, live.dtype
    if isinstance(lay, ConsolidatorLayer):
        values = lay.values.to(dev, dt) if add else None
        w0 = cache.get(name, base, lay, live) if cache is not None else None
        off = 0
        for seg, idx in segments(lay.shape, lay.branches, dev):
            part = slice(off, off + seg.count)
            off += seg.count
            if idx is None:
                lv = support_view(live, seg.g, seg.shuffle)
                if w0 is not None:
                    bv = w0[part].view(lv.shape)
                else:
                    bv = support_view(base, seg.g, seg.shuffle).to(dev)
                if add:
                    torch.add(bv, values[part].view(lv.shape), out=lv)
                else:
                    lv.copy_(bv)
            else:
                b = w0[part] if w0 is not None else base.view(-1)[idx.to(base.device)].to(dev)
                live.view(-1).index_copy_(0, idx, b + values[part] if add else b)
    elif not add:
        live.copy_(base)
    elif isinstance(lay, DenseLayer):
        torch.add(base.to(dev), lay.values.to(dev, dt), out=live)
    elif isinstance(lay, LoRALayer):
        torch.addmm(base.to(dev), lay.B.to(dev, dt), lay.A.to(dev, dt), out=live)
    else:
        raise MgrError(f"cannot apply a layer delta of kind {getattr(lay, 'kind', '?')!r}")


@torch.no_grad()
def apply(
    live: MutableMapping[str, Tensor],
    base: Mapping[str, Tensor],
    delta: Delta,
    *,
    cache: SupportCache | None = None,
) -> None:
    """``W[supp] = W0[supp] + dW`` on every layer; whole tensors set. Idempotent."""
    check_targets(live, base, delta)
    for name, lay in delta.layers.items():
        _write_layer(name, live[name], base[name], lay, True, cache)
    for name, t in delta.whole.items():
        live[name].copy_(t)


@torch.no_grad()
def restore(
    live: MutableMapping[str, Tensor],
    base: Mapping[str, Tensor],
    delta: Delta,
    *,
    cache: SupportCache | None = None,
) -> None:
    """``W[supp] = W0[supp]`` on every layer; whole tensors set back from ``base`` where it has
    them."""
    check_targets(live, base, delta, restoring=True)
    for name, lay in delta.layers.items():
        _write_layer(name, live[name], base[name], lay, False, cache)
    for name in delta.whole:
        if name in base:
            live[name].copy_(base[name])


def _overwritten(lay: LayerDelta, new: LayerDelta | None) -> bool:
    """Whether applying ``new`` writes every position ``lay`` touched (so restoring it is moot)."""
    if new is None or tuple(new.shape) != tuple(lay.shape):
        return False
    if not isinstance(new, ConsolidatorLayer):
        return True  # dense and LoRA deltas write the whole weight
    return isinstance(lay, ConsolidatorLayer) and covers(lay.shape, new.branches, lay.branches)


def switch(
    live: MutableMapping[str, Tensor],
    base: Mapping[str, Tensor],
    old: Delta | None,
    new: Delta | None,
    *,
    cache: SupportCache | None = None,
) -> None:
    """Restore ``old``'s supports, then apply ``new``: O(both deltas), exact, re-runnable.

    Positions that ``new`` rewrites anyway (e.g. two deltas of the same structure) are not restored
    first: the result is the same, for half the memory traffic.
    """
    if new is not None:
        check_targets(live, base, new)  # refuse before touching anything
    if old is not None:
        check_targets(live, base, old)
        with torch.no_grad():
            for name, lay in old.layers.items():
                if not _overwritten(lay, new.layers.get(name) if new is not None else None):
                    _write_layer(name, live[name], base[name], lay, False, cache)
            for name in old.whole:
                if name in base and (new is None or name not in new.whole):
                    live[name].copy_(base[name])
    if new is not None:
        apply(live, base, new, cache=cache)


def check_compatible(
    delta: Delta,
    backbone_name: str | None,
    backbone_hash: str,
    shapes: Mapping[str, Sequence[int]],
) -> None:
    """Refuse a delta made for another backbone: other weights hash, or layer shapes that differ.

    ``shapes`` maps the backbone's tensor names to shapes. Whole tensors it lacks (a task head) are
    not checked; those it has must match.
    """
    m = delta.meta
    if m.backbone_hash != backbone_hash:
        made = f"{m.backbone} (weights {m.backbone_hash[:12]})"
        live = f"{backbone_name or 'this backbone'} (weights {backbone_hash[:12]})"
        raise MgrError(f"the delta was made for {made}, not for {live}")
    for name, lay in delta.layers.items():
        if name not in shapes:
            raise MgrError(f"the delta adapts {name}, which backbone {backbone_name} does not have")
        if tuple(shapes[name]) != tuple(lay.shape):
            raise MgrError(
                f"the delta's {name} is {lay.shape[0]}x{lay.shape[1]}, backbone "
                f"{backbone_name} has {'x'.join(map(str, shapes[name]))}"
            )
    for name, t in delta.whole.items():
        if name in shapes and tuple(shapes[name]) != tuple(t.shape):
            raise MgrError(
                f"the delta's {name} has shape {tuple(t.shape)}, backbone "
                f"{backbone_name} has {tuple(shapes[name])}"
            )
