"""Adapter artifacts checked against the catalog before anything is touched.

A switch reads the artifact once: its size and sha256 are compared with the catalog's record, the
bytes are parsed as a `Delta`, and the delta is checked against the backbone it will be applied to.
Any failure is one clear `MgrError`; nothing has been written yet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from manager.errors import MgrError
from manager.home import Home

if TYPE_CHECKING:  # torch stays out of the import path of light commands
    from torch import Tensor

    from manager.catalog.models import AdapterVersion
    from manager.delta.delta import Delta

# Outcomes of `check_file`, as `mgr verify` prints them.
OK = "ok"
MISSING = "missing"
CORRUPT = "corrupt"


@dataclass(frozen=True)
class VersionRef:
    """What a switch needs of a version row, detached from any session."""

    id: int
    task_id: int
    task: str
    number: int
    method: str
    path: str
    bytes: int
    content_hash: str
    num_classes: int
    backbone_id: int | None

    @classmethod
    def of(cls, v: AdapterVersion) -> VersionRef:
        return cls(
            v.id,
            v.task_id,
            v.task.name,
            v.number,
            v.method,
            v.path,
            v.bytes,
            v.content_hash,
            v.task.num_classes,
            v.task.backbone_id,
        )

    @property
    def label(self) -> str:
        return f"{self.task}@{self.number}"


def parse_target(text: str) -> tuple[str, int | None]:
    """``"pets"`` -> ``("pets", None)``; ``"pets@3"`` (or ``pets@v3``) -> ``("pets", 3)``."""
    from manager.names import validate_task_name

    name, sep, ver = text.partition("@")
    validate_task_name(name)
    if not sep:
        return name, None
    digits = ver[1:] if ver[:1] in ("v", "V") else ver
    if not digits.isdigit() or int(digits) < 1:
        raise MgrError(f"bad version {ver!r} in {text!r}: use TASK@N, e.g. {name}@2")
    return name, int(digits)


def check_file(home: Home, path: str, size: int, sha256: str) -> tuple[str, str]:
    """``(OK|MISSING|CORRUPT, detail)`` for a file recorded with ``size`` bytes and ``sha256``."""
    data = _read(home, path)
    if data is None:
        return MISSING, f"{home.abs(path)} does not exist"
    return _compare(data, size, sha256)


def _read(home: Home, path: str) -> bytes | None:
    try:
        return home.abs(path).read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MgrError(f"cannot read {home.abs(path)}: {exc.strerror or exc}") from None


def _compare(data: bytes, size: int, sha256: str) -> tuple[str, str]:
    if len(data) != size:
        return CORRUPT, f"{len(data)} bytes on disk, the catalog recorded {size}"
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        return CORRUPT, f"sha256 {digest[:12]} on disk, the catalog recorded {sha256[:12]}"
    return OK, ""


def load_verified(
    home: Home,
    ref: VersionRef,
    backbone_name: str,
    backbone_hash: str,
    shapes: Mapping[str, Sequence[int]],
) -> Delta:
    """The version's `Delta`, after size, sha256, format and backbone checks (else MgrError)."""
    from manager.delta.apply import check_compatible
    from manager.delta.delta import Delta

    data = _read(home, ref.path)
    if data is None:
        raise MgrError(f"artifact of {ref.label} is missing: {home.abs(ref.path)}")
    status, detail = _compare(data, ref.bytes, ref.content_hash)
    if status != OK:
        raise MgrError(f"artifact of {ref.label} is corrupt ({detail}): {home.abs(ref.path)}")
    delta = Delta.from_bytes(data, where=str(home.abs(ref.path)))
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
