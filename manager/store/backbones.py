"""Materialised backbones: W0 written once under the home and recorded with its hash.

A backbone is written once under ``<home>/backbones/`` as safetensors and recorded with its
content hash, so W0 is always on local disk, checkable, and the same for every later version.
"""

from __future__ import annotations

import hashlib
import os

from sqlalchemy import select
from sqlalchemy.orm import Session
from torch import nn

from manager.catalog.models import Backbone
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    store.write_bytes(path, data)
    if row is None:
        name = spec.split(":", 1)[0]
        row = Backbone(
            timm_name=name,
            spec=spec,
            weights_source=str(weights) if weights is not None else "hub",
            content_hash=digest,
            param_count=param_count(model),
            bytes=path.stat().st_size,
            path=store.rel(path),
        )
        s.add(row)
        s.flush()
    return row


def load_backbone(home: Home, row: Backbone, num_classes: int = 0) -> nn.Module:
    """Re-create a materialised backbone, its content hash checked against the catalog."""
    from manager.backbone import load_backbone_file

    path = Store.of(home).resolve(row.path)
    if not path.is_file():
        raise MgrError(f"backbone file missing: {path} (recorded for {row.spec})")
    return load_backbone_file(path, row.spec, num_classes, expected_hash=row.content_hash)
