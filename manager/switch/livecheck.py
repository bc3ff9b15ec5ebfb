"""The cheap check of the live files, without torch: headers, sizes and times only.

``mgr status`` answers from this (issue 20: under a second, where importing torch alone takes
seconds); the bit-for-bit comparison in `manager.switch.status` runs on request
(``--verify-bits``) or when this check fails. These functions are the only copy: the switch
(`manager.switch.live`) and the memory-mapped file (`manager.switch.livefile`) import them, so this
module must stay free of torch (``tests/test_catalog_imports.py``).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import NoReturn

from manager.errors import MgrError
from manager.store.fs import Store
from manager.switch.plan import UNKNOWN

HEAD_FORMAT = "mgr-live-head"  # the head file's ``format``, as manager.switch.live writes it
LIVE_NAMES = ("backbone.safetensors", "head.safetensors")


def read_header(path: Path) -> dict:
    """A safetensors file's header (``__metadata__`` included); MgrError if it is not one."""
    return header_and_offset(path)[1]


def header_and_offset(path: Path) -> tuple[int, dict]:
    """(offset of the data section, the header): `read_header` and where the tensors start."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise MgrError(f"{path}: not a safetensors file (too short)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise MgrError(f"{path}: not a safetensors file (bad header length)")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise MgrError(f"{path}: not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise MgrError(f"{path}: not a safetensors file (bad header)")
    return 8 + n, header


def metadata(header: dict) -> dict[str, str]:
    """A header's ``__metadata__`` (string to string), empty if it has none."""
    meta = header.get("__metadata__") or {}
    return meta if isinstance(meta, dict) else {}


def layout(header: dict) -> dict[str, tuple[str, tuple[int, ...], tuple[int, int]]]:
    """``{name: (dtype, shape, data_offsets)}``: two files with equal layouts hold the same
    tensors at the same byte positions."""
    return {
        k: (e["dtype"], tuple(e["shape"]), tuple(e["data_offsets"]))
        for k, e in header.items()
        if k != "__metadata__"
    }


def not_a_link(store: Store, digest: str, name: str) -> Path:
    """Backbone ``digest``'s live file ``name``, refused if it or its folder is a symbolic link
    (it could lead to W0 or outside the home)."""
    folder = store.live_dir(digest)
    literal = store.live / digest[:16] / name
    confined = store.confine(folder / name)
    if literal.is_symlink() or confined != literal or folder != literal.parent:
        raise_link(literal, confined)
    return confined


def raise_link(literal: Path, confined: Path) -> NoReturn:
    """Refuse live file ``literal``, a symbolic link to ``confined``."""
    raise MgrError(
        f"refusing to use {literal}: it is a symbolic link (to {confined}); the live files "
        "must be plain files under the home (remove the link, then repair the live files)",
        hint="remove the link, then run 'mgr switch --repair'",
    )


def live_weights(store: Store, digest: str) -> Path:
    """Backbone ``digest``'s big live file, refused if it is a symbolic link."""
    return not_a_link(store, digest, LIVE_NAMES[0])


def live_head(store: Store, digest: str) -> Path:
    """Backbone ``digest``'s head file, refused if it is a symbolic link."""
    return not_a_link(store, digest, LIVE_NAMES[1])


def read_head_meta(store: Store, digest: str) -> dict[str, str] | None:
    """The head file's metadata, or None if it is missing or unreadable."""
    try:
        meta = metadata(read_header(live_head(store, digest)))
    except (OSError, MgrError):
        return None
    return meta if meta.get("format") == HEAD_FORMAT else None


def applied_version_id(meta: dict[str, str] | None) -> int | str | None:
    """The version id whose values the big file holds per the head file (None: the backbone
    alone; `UNKNOWN` when the head file is missing or not ours)."""
    if meta is None:
        return UNKNOWN
    raw = meta.get("version_id", "")
    return int(raw) if raw.isascii() and raw.isdigit() else None


def live_matches(live: Path, base: Path) -> bool:
    """Whether ``live`` is a copy of backbone file ``base`` by header (metadata, tensor layout)
    and size: the cheap test that it holds that backbone's tensors where W0 has them."""
    try:
        if not live.is_file() or os.path.samefile(live, base):
            return False
        a, b = read_header(live), read_header(base)
        return (
            metadata(a) == metadata(b)
            and layout(a) == layout(b)
            and live.stat().st_size == base.stat().st_size
        )
    except (OSError, MgrError, KeyError, TypeError):
        return False


def live_problem(store: Store, base: Path, applied_id: int | None, digest: str) -> str | None:
    """Why backbone ``digest``'s live files cannot be trusted to hold W0 + version
    ``applied_id``; None if they can. A few stats and headers, no tensor is read."""
    meta = read_head_meta(store, digest)
    if meta is None:
        return "the live head file is missing or unreadable"
    if applied_version_id(meta) != applied_id:
        return "the live head file names another version than the deployment"
    weights = live_weights(store, digest)
    if not live_matches(weights, base):
        return f"the live file {weights} is missing or not a copy of the backbone file"
    mtime, size = meta.get("live_mtime_ns", ""), meta.get("live_size", "")
    if not (mtime.isascii() and mtime.isdigit() and size.isascii() and size.isdigit()):
        return "the live head file records no size and time of the live file"
    st = weights.stat()
    if (st.st_mtime_ns, st.st_size) != (int(mtime), int(size)):
        return f"the live file {weights} was modified after the last switch"
    return None


def legacy_live_present(store: Store) -> bool:
    """Whether ``live/`` still holds the single-backbone files of a home before 0005 (stats)."""
    return any((store.live / n).exists() for n in LIVE_NAMES)
