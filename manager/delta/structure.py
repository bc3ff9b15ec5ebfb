"""Supports of grouped-connection branches, from the structure alone.

A branch ``(g, shuffle)`` on a weight ``W`` of shape ``out x in`` is block-diagonal with ``g``
blocks of ``o x c`` (``o = out/g``, ``c = in/g``). Its weights ``w`` have shape ``(g, o, c)``; entry
``w[k, r, t]`` lands on ``W[k*o + r, col(k*c + t)]`` where ``col(j) = j`` without shuffle and
``col(j) = (j % g) * c + j // g`` with shuffle (the reorder views the input as ``[g, c]``,
transposes and flattens, so ``x'[j] = x[col(j)]``).

Those positions are one strided view of ``W`` (element order = ``w.flatten()`` order):

* no shuffle: shape ``(g, o, c)``, strides ``(o*in + c, in, 1)``;
* shuffle, ``g | c`` (``m = c/g``, ``t = u*g + v``): shape ``(g, o, m, g)``,
  strides ``(o*in + m, in, 1, c)``;
* shuffle, ``c | g`` (``n = g/c``, ``k = s*n + q``): shape ``(c, n, o, c)``,
  strides ``(n*o*in + 1, o*in + c*c, in, c)``;
* otherwise no single view exists and a flat index tensor is computed from the structure (cached).

Several branches: the stored values cover the *union* of the supports. Branches are taken in a
canonical order (``g`` ascending, i.e. largest support first; ties: no shuffle first); each
contributes the positions of its support not covered by the earlier ones, in its own view order.
A branch whose support is disjoint from the earlier ones contributes its whole view; one contained
in them contributes nothing; a partial overlap (or a branch without a view) contributes a flat
index of its new positions, computed once per ``(shape, structure)`` with a boolean mask and
cached. Nothing of this is ever stored: it all follows from ``(out, in)`` and ``[(g, shuffle)]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, overload

import torch
from torch import Tensor

from manager.errors import BadInput, MgrError

Shape = tuple[int, int]
Structure = tuple[tuple[int, bool], ...]


def normalize(branches: Iterable) -> Structure:
    """``[(g, shuffle)]`` or ``Branch`` objects -> a hashable tuple of ``(int, bool)`` pairs."""
    out = []
    for b in branches:
        g, shuffle = (b.g, b.shuffle) if hasattr(b, "g") else b
        out.append((int(g), bool(shuffle)))
    return tuple(out)


def parse_structure(spec: str | Iterable, *, shuffle: bool = False) -> Structure:
    """Any spelling of a structure -> ``Structure``, validated (at least one branch, ``g >= 1``).

    Spellings: the CLI's text ``"384,192"`` / ``"96,96s"`` (``s``: that branch's input channels
    are reordered; ``shuffle`` reorders all of them), the catalog's JSON ``[[g, shuffle], ...]``,
    a ``Structure`` and a sequence of ``Branch`` objects. The branch order is kept.
    """
    if isinstance(spec, str):
        out = []
        for item in spec.replace(" ", "").split(","):
            s = item.lower().endswith("s")
            digits = item[:-1] if s else item
            if not (digits.isascii() and digits.isdigit()) or int(digits) < 1:
                raise BadInput(f"bad branch {item!r} in {spec!r}: expected e.g. '384' or '96s'")
            out.append((int(digits), s or shuffle))
        return tuple(out)
    try:
        items = list(spec)
        out = []
        for b in items:
            g, s = (b.g, b.shuffle) if hasattr(b, "g") else b
            if isinstance(g, bool) or not isinstance(g, int) or not isinstance(s, bool):
                raise TypeError
            out.append((g, s or shuffle))
    except (TypeError, ValueError):
        raise BadInput(f"bad structure {spec!r}: expected e.g. [[96, false], [96, true]]") from None
    if not out:
        raise BadInput("a structure needs at least one branch")
    for g, _ in out:
        if g < 1:
            raise BadInput(f"branch groups must be positive, got g={g}")
    return tuple(out)


@overload
def format_structure(structure: str | Iterable, style: Literal["text"] = "text") -> str: ...
@overload
def format_structure(structure: str | Iterable, style: Literal["json"]) -> list[list]: ...
def format_structure(
    structure: str | Iterable, style: Literal["text", "json"] = "text"
) -> str | list[list]:
    """Any spelling -> the CLI's text ``"96,96s"`` or the catalog's JSON ``[[96, false], ...]``."""
    parsed = parse_structure(structure)
    if style == "json":
        return [[g, s] for g, s in parsed]
    return ",".join(f"{g}{'s' if s else ''}" for g, s in parsed)


def canonical(branches: Iterable) -> Structure:
    """The order in which branches contribute stored values: ``g`` ascending, no shuffle first."""
    return tuple(sorted(normalize(branches)))


def check_divisible(shape: Sequence[int], g: int, name: str = "layer") -> None:
    """Raise a clear error when ``g`` does not divide both dimensions of ``shape``."""
    out, in_ = shape
    if g < 1 or out % g or in_ % g:
        raise MgrError(
            f"{name}: weight of shape {out}x{in_} cannot be split into g={g} groups "
            f"(g must divide both {out} and {in_})"
        )


def view_geometry(
    shape: Sequence[int], g: int, shuffle: bool
) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """``(size, stride)`` of the branch's support as a strided view of a contiguous W, or None."""
    out, in_ = shape
    o, c = out // g, in_ // g
    if not shuffle:
        return (g, o, c), (o * in_ + c, in_, 1)
    if c % g == 0:
        m = c // g
        return (g, o, m, g), (o * in_ + m, in_, 1, c)
    if g % c == 0:
        n = g // c
        return (c, n, o, c), (n * o * in_ + 1, o * in_ + c * c, in_, c)
    return None


def support_view(w: Tensor, g: int, shuffle: bool) -> Tensor | None:
    """The branch's support as a strided view of 2-D ``w`` (shares storage); None if none exists."""
    geom = view_geometry(w.shape, g, shuffle)
    if geom is None:
        return None
    if not w.is_contiguous():
        raise ValueError("support views need a contiguous weight")
    return w.as_strided(geom[0], geom[1], w.storage_offset())


@lru_cache(maxsize=256)
def positions(shape: Shape, g: int, shuffle: bool) -> Tensor:
    """Flat indices into ``W.view(-1)`` of the branch's support, in ``w.flatten()`` order (CPU)."""
    out, in_ = shape
    o, c = out // g, in_ // g
    k = torch.arange(g).view(g, 1, 1)
    r = torch.arange(o).view(1, o, 1)
    j = k * c + torch.arange(c).view(1, 1, c)
    col = (j % g) * c + j // g if shuffle else j
    return ((k * o + r) * in_ + col).reshape(-1)


@dataclass(frozen=True)
class Segment:
    """A branch's share of the stored values: its whole view (``index`` None) or flat positions."""

    g: int
    shuffle: bool
    count: int
    index: Tensor | None


@lru_cache(maxsize=256)
def union_plan(shape: Shape, structure: Structure) -> tuple[Segment, ...]:
    """How the union support's values are laid out (see the module docstring); cached."""
    out, in_ = shape
    for g, _ in structure:
        check_divisible(shape, g)
    covered = torch.zeros(out * in_, dtype=torch.bool)
    plan = []
    for g, shuffle in canonical(structure):
        pos = positions(shape, g, shuffle)
        new = ~covered[pos]
        n_new = int(new.sum())
        if n_new == 0:
            continue  # contained in the earlier branches' supports
        if n_new == pos.numel() and view_geometry(shape, g, shuffle) is not None:
            plan.append(Segment(g, shuffle, n_new, None))
        else:
            plan.append(Segment(g, shuffle, n_new, pos if n_new == pos.numel() else pos[new]))
        covered[pos] = True
    return tuple(plan)


@lru_cache(maxsize=512)
def _index_on(shape: Shape, structure: Structure, i: int, device: torch.device) -> Tensor:
    return union_plan(shape, structure)[i].index.to(device)


def segments(shape: Shape, structure: Structure, device: torch.device):
    """Yield ``(segment, index_on_device_or_None)``; fallback indices cached per device."""
    for i, seg in enumerate(union_plan(shape, structure)):
        if seg.index is None or seg.index.device == device:
            yield seg, seg.index
        else:
            yield seg, _index_on(shape, structure, i, device)


@lru_cache(maxsize=256)
def covers(shape: Shape, outer: Structure, inner: Structure) -> bool:
    """Whether ``outer``'s union support contains ``inner``'s (computed once per pair, cached)."""
    if canonical(outer) == canonical(inner):
        return True
    mask = torch.zeros(shape[0] * shape[1], dtype=torch.bool)
    for g, shuffle in outer:
        mask[positions(shape, g, shuffle)] = True
    return all(bool(mask[positions(shape, g, s)].all()) for g, s in inner)


def support_numel(shape: Sequence[int], branches: Iterable) -> int:
    """Exact size of the union of the branches' supports on an ``out x in`` weight."""
    return sum(s.count for s in union_plan(tuple(shape), normalize(branches)))


def stored_bytes(
    shape: Sequence[int], branches: Iterable, dtype: torch.dtype = torch.float32
) -> int:
    """Bytes of the stored delta values of one layer (tensor data only)."""
    return support_numel(shape, branches) * torch.empty((), dtype=dtype).element_size()


def scatter_branches(shape: Sequence[int], branches: Iterable, weights: Sequence[Tensor]) -> Tensor:
    """Dense ``dW = sum_i P_i(BD_i)`` from branch weights ``(g, o, c)``; overlaps are summed.

    Dense on purpose: used offline (consolidation, merging, tests), never on the switch path.
    """
    out, in_ = shape
    dw = torch.zeros(out, in_, dtype=weights[0].dtype, device=weights[0].device)
    for (g, shuffle), w in zip(normalize(branches), weights, strict=True):
        view = support_view(dw, g, shuffle)
        if view is not None:
            view.add_(w.reshape(view.shape))
        else:
            idx = positions((out, in_), g, shuffle).to(dw.device)
            dw.view(-1).index_add_(0, idx, w.reshape(-1))
    return dw


def gather_union(dw: Tensor, branches: Iterable) -> Tensor:
    """The stored values of dense ``dW`` on the union support, in plan order (1-D)."""
    structure = normalize(branches)
    parts = []
    for seg, idx in segments(tuple(dw.shape), structure, dw.device):
        if idx is None:
            parts.append(support_view(dw, seg.g, seg.shuffle).reshape(-1))
        else:
            parts.append(dw.reshape(-1)[idx])
    return torch.cat(parts) if parts else dw.new_zeros(0)


def scatter_union(values: Tensor, shape: Sequence[int], branches: Iterable) -> Tensor:
    """Inverse of ``gather_union``: a dense ``out x in`` tensor, zero off the support."""
    dw = torch.zeros(tuple(shape), dtype=values.dtype, device=values.device)
    off = 0
    for seg, idx in segments(tuple(shape), normalize(branches), values.device):
        part = values[off : off + seg.count]
        if idx is None:
            view = support_view(dw, seg.g, seg.shuffle)
            view.copy_(part.view(view.shape))
        else:
            dw.view(-1)[idx] = part
        off += seg.count
    return dw
