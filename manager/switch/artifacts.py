"""Adapter artifacts checked against the catalog before anything is touched.

A switch reads the artifact once: its size and sha256 are compared with the catalog's record, the
bytes are parsed as a `Delta`, and the delta is checked against the backbone it will be applied to.
Any failure is one clear `MgrError`; nothing has been written yet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from manager.errors import Corrupt, MgrError, NotFound
from manager.registry.maintenance import OK, compare
from manager.store.fs import Store

if TYPE_CHECKING:  # torch stays out of the import path of light commands
    from torch import Tensor

    from manager.catalog.refs import VersionRef
    from manager.delta.delta import Delta


def read_recorded(store: Store, rel: str) -> bytes | None:
    """The bytes of a file the catalog records at ``rel`` (confined), None if it is missing."""
    path = store.resolve(rel)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MgrError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_verified(
    store: Store,
    ref: VersionRef,
    backbone_name: str,
    backbone_hash: str,
    shapes: Mapping[str, Sequence[int]],
) -> Delta:
    """The version's `Delta`, after size, sha256, format, finiteness and backbone checks.

    Any failure is an MgrError naming the file; a delta with NaN or infinity is never applied.
    """
    from manager.delta.apply import check_compatible
    from manager.delta.delta import Delta

    path = store.resolve(ref.path)
    data = read_recorded(store, ref.path)
    if data is None:
        raise NotFound(f"artifact of {ref.label} is missing: {path}")
    status, detail = compare(data, ref.bytes, ref.content_hash)
    if status != OK:
        raise Corrupt(f"artifact of {ref.label} is corrupt ({detail}): {path}")
    delta = Delta.from_bytes(data, where=str(path))
    bad = delta.nonfinite()
    if bad:
        raise Corrupt(
            f"artifact of {ref.label} holds NaN or infinite values in {', '.join(bad[:3])}: {path}"
        )
    check_compatible(delta, backbone_name, backbone_hash, shapes)
    return delta


def split_head(
    delta: Delta, base_names: Sequence[str] | Mapping
) -> tuple[Delta, dict[str, Tensor]]:
    """``(backbone part, head tensors)``: whole tensors the backbone lacks are the task's head.

    The backbone part is what touches the shared weights; the head is set by the caller (a
    resized classifier in memory, the small head file on disk).
    """
    from manager.delta.delta import Delta

    names = set(base_names)
    head = {n: t for n, t in delta.whole.items() if n not in names}
    body = Delta(
        dict(delta.layers),
        {n: t for n, t in delta.whole.items() if n in names},
        delta.meta,
        dict(delta.extra),
    )
    return body, head


def pieces(delta: Delta) -> list[Delta]:
    """One small `Delta` per tensor the delta writes, so a switch can be paced for tests."""
    from manager.delta.delta import Delta

    out = [Delta({n: lay}, {}, delta.meta) for n, lay in delta.layers.items()]
    out += [Delta({}, {n: t}, delta.meta) for n, t in delta.whole.items()]
    return out


def touched_values(delta: Delta) -> int:
    """Weight values a switch writes for this delta (its supports and whole tensors)."""
    from manager.delta.structure import support_numel

    n = 0
    for lay in delta.layers.values():
        branches = getattr(lay, "branches", None)
        n += support_numel(lay.shape, branches) if branches else lay.shape[0] * lay.shape[1]
    return n + sum(t.numel() for t in delta.whole.values())
