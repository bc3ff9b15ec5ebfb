"""Materialised backbones: W0 written once under the home and recorded with its hash.

A backbone is written once under ``<home>/backbones/`` (``<artifact root>/backbones/`` when
``MGR_ARTIFACT_ROOT`` is set, so every machine sharing the catalog finds the same W0) as
safetensors and recorded with its content hash, byte size and ``st_mtime_ns``, so W0 is always on
disk and checkable. A switch
reads a few tensors of W0 and must not hash the whole file each time: `checked_backbone_file`
compares size and mtime with the record (two syscalls) and re-hashes only when they differ.

This module imports neither timm nor torchvision unless a model is built (`materialise_backbone`,
`load_backbone`): the switch path uses only `checked_backbone_file`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from manager.catalog.models import Backbone
from manager.digest import tensors_digest
from manager.errors import Corrupt, MgrError, NotFound
from manager.home import Home
from manager.store.fs import Store

if TYPE_CHECKING:
    from torch import nn

    from manager.catalog import Catalog
    from manager.catalog.refs import BackboneRef


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_content_hash(path: str | os.PathLike[str]) -> str:
    """The content hash (`manager.backbone.content_hash`) of a backbone file's tensors.

    The same digest over names, dtypes, shapes and bytes in name order, read one tensor at a time
    without building a model (and without importing timm).
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return tensors_digest(f.keys(), f.get_tensor)


def materialise_backbone(
    s: Session, home: Home, model: nn.Module, spec: str, weights: str | None
) -> Backbone:
    """The catalog row of ``model``'s backbone weights, writing them under the home once."""
    from manager.backbone import backbone_file_bytes, param_count

    store = Store.of(home)
    data, digest = backbone_file_bytes(model)
    row = s.scalar(select(Backbone).where(Backbone.content_hash == digest))
    if row is not None and store.resolve(row.path).is_file():
        return row
    path = store.backbone_file(digest)
    store.write_bytes(path, data, what=f"the backbone weights of {spec}")
    st = path.stat()
    if row is None:
        name = spec.split(":", 1)[0]
        row = Backbone(
            timm_name=name,
            spec=spec,
            weights_source=str(weights) if weights is not None else "hub",
            content_hash=digest,
            param_count=param_count(model),
            bytes=st.st_size,
            path=store.rel(path),
            file_mtime_ns=st.st_mtime_ns,
        )
        s.add(row)
    else:  # the file had been lost: written again, recorded again
        row.path, row.bytes, row.file_mtime_ns = store.rel(path), st.st_size, st.st_mtime_ns
    s.flush()
    return row


def check_backbone_file(store: Store, ref: BackboneRef) -> tuple[Path, int | None]:
    """``(path, mtime to record)`` of a backbone file that matches the catalog, else MgrError.

    Size and ``st_mtime_ns`` equal to the record: trusted as written (no read). Otherwise (or
    with no mtime recorded, a row from before it was) the tensors are hashed once; on a match
    the new mtime is returned for the caller to record, so the next check is cheap again.
    """
    path = store.resolve(ref.path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise NotFound(
            f"backbone file missing: {path} (recorded for {ref.spec}; the task's versions "
            "cannot be switched without it)"
        ) from None
    except OSError as exc:
        raise MgrError(f"cannot read backbone file {path}: {exc.strerror or exc}") from None
    if st.st_size != ref.bytes:
        raise Corrupt(
            f"backbone file {path} is corrupt: {st.st_size} bytes on disk, the catalog "
            f"recorded {ref.bytes}"
        )
    if ref.file_mtime_ns is not None and st.st_mtime_ns == ref.file_mtime_ns:
        return path, None
    try:
        got = file_content_hash(path)
    except Exception as exc:  # safetensors raises several kinds on a damaged file
        raise Corrupt(f"backbone file {path} is corrupt: {exc}") from None
    if got != ref.content_hash:
        raise Corrupt(
            f"backbone file {path} is corrupt: content hash {got[:12]}, the catalog recorded "
            f"{ref.content_hash[:12]} (the file changed since it was written)"
        )
    return path, st.st_mtime_ns


def checked_backbone_file(store: Store, catalog: Catalog, ref: BackboneRef) -> Path:
    """`check_backbone_file`, recording the file's mtime when it had to be re-hashed."""
    path, mtime = check_backbone_file(store, ref)
    if mtime is not None:
        with catalog.session() as s:
            row = s.get(Backbone, ref.id)
            if row is not None and row.content_hash == ref.content_hash:
                row.file_mtime_ns = mtime
    return path


def load_backbone(home: Home, row: Backbone, num_classes: int = 0) -> nn.Module:
    """Re-create a materialised backbone, its content hash checked against the catalog."""
    from manager.backbone import load_backbone_file

    path = Store.of(home).resolve(row.path)
    if not path.is_file():
        raise NotFound(f"backbone file missing: {path} (recorded for {row.spec})")
    return load_backbone_file(path, row.spec, num_classes, expected_hash=row.content_hash)
