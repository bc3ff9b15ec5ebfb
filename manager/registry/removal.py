"""Removing a task: its rows (versions, budget, aliases cascade), then its files.

Rows first, in one transaction; the folders after the commit. A failure between the two leaves
only files that nothing owns (``gc`` removes them), never rows without their files. A home that
belongs to another catalog is refused before anything is touched.
"""

from __future__ import annotations

from manager.catalog import Catalog, identity
from manager.catalog import tasks as task_ops
from manager.errors import Conflict, MgrError
from manager.store.fs import Store


def check_owner(catalog: Catalog, name: str) -> None:
    """Refuse when the home's files belong to another catalog (a task of that name there is not
    this one)."""
    with catalog.session(write=False) as s:
        why = identity.mismatch(Store.of(catalog.home), identity.catalog_id(s))
    if why is not None:
        raise Conflict(f"refusing to remove task {name!r}: {why}", hint="check MGR_DB_URL")


def remove_task(catalog: Catalog, name: str, *, force: bool = False) -> list[str]:
    """Remove ``name``'s rows, then its artifact and run folders; return a warning per folder
    that could not be removed. Without ``force`` a task live on any host is refused (in the
    transaction that would delete it); with it, the caller has restored the live files first."""
    check_owner(catalog, name)
    with catalog.session() as s:
        task_ops.remove_task(s, name, catalog.home.host, force=force)
    store = Store.of(catalog.home)
    warnings = []
    for folder in (store.artifacts / name, store.runs / name):
        try:
            store.rmtree(folder)
        except (OSError, MgrError) as exc:
            warnings.append(f"could not remove {folder}: {exc}")
    return warnings
