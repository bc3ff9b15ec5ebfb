"""Which catalog a home belongs to: a random id in the catalog, the same id in the home.

`mgr gc` deletes the files under a home that no catalog row records. Aimed at the wrong catalog
(``MGR_DB_URL=sqlite://``, an empty or another PostgreSQL database, a restored old file) every
artifact and backbone would look like a leftover. So the catalog holds one random id (table
``catalog_identity``, migration 0006), the home records it in ``<home>/catalog-id`` (and in the
artifact root, when there is one) at first use, and every deletion by maintenance checks them
first (`check_before_deleting`):

* the ids differ: refused;
* the home has no id yet (a home from before ids): the catalog must record at least one of the
  files it holds, else it is unrelated and refused; a related one is adopted (the id written).

``mgr db init --force`` binds the home to the catalog it names (`bind`): the one explicit way to
hand a home's files to another catalog.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from manager.catalog.models import CatalogIdentity
from manager.errors import Conflict, MgrError
from manager.store.fs import Store


def catalog_id(s: Session) -> str | None:
    """The catalog's id (None only for a forged catalog that lost its row)."""
    return s.scalars(select(CatalogIdentity.id).order_by(CatalogIdentity.id)).first()


def ensure_catalog_id(s: Session) -> str:
    """The catalog's id, created if its row is missing (a write session)."""
    cid = catalog_id(s)
    if cid is None:
        cid = secrets.token_hex(16)
        s.add(CatalogIdentity(id=cid))
        s.flush()
    return cid


def home_has_files(store: Store) -> bool:
    """Whether the home (or artifact root) holds any artifact, backbone or live file."""
    for folder in (store.artifacts, store.backbones, store.live):
        if folder.is_dir() and any(p.is_file() for p in folder.rglob("*")):
            return True
    return False


def bind_fresh(store: Store, cid: str) -> None:
    """At first use: record ``cid`` in a home that has no id and holds no files yet.

    A home that already holds files and no id (made before ids) is adopted by gc instead, once
    the catalog is seen to record them. A read-only home stays as it is: readers must work there.
    """
    ids = store.read_catalog_ids()
    if all(v is not None for v in ids.values()) or home_has_files(store):
        return
    with contextlib.suppress(OSError, MgrError):  # a read-only home: readers must work there
        store.write_catalog_id(cid)


def bind(store: Store, cid: str) -> None:
    """Record ``cid`` as the home's catalog, replacing any other (``mgr db init --force``)."""
    try:
        store.write_catalog_id(cid)
    except OSError as exc:
        raise MgrError(f"cannot record the catalog id in {store.root}: {exc.strerror}") from None


def mismatch(store: Store, cid: str | None) -> str | None:
    """Why the home does not belong to the catalog ``cid`` by its recorded id, else None."""
    for path, recorded in store.read_catalog_ids().items():
        if recorded is not None and recorded != cid:
            return (
                f"{path} says it belongs to catalog {recorded}, but this catalog is "
                f"{cid or 'without an id'}"
            )
    return None


def check_before_deleting(
    s: Session, store: Store, recorded: Iterable[Path | None], what: str
) -> None:
    """Refuse (MgrError, one line) to delete anything in a home that belongs to another catalog.

    ``recorded``: the files of every row of this catalog (resolved paths). A home without an id
    is adopted when the catalog records at least one file it holds, or when it holds none.
    """
    cid = catalog_id(s)
    why = mismatch(store, cid)
    if why is None and any(v is None for v in store.read_catalog_ids().values()):
        if home_has_files(store) and not any(p is not None and p.is_file() for p in recorded):
            why = "the home holds files and this catalog records none of them"
        elif cid is not None:
            with contextlib.suppress(OSError, MgrError):  # a home from before ids: adopted
                store.write_catalog_id(cid)
    if why is not None:
        raise Conflict(
            f"refusing to {what}: the catalog looks unrelated to the home {store.root} ({why}); "
            "nothing was deleted",
            hint="check MGR_DB_URL (or run 'mgr db init --force' to bind the home to this catalog)",
        )
