"""Which version a request names, from an in-memory view of the catalog.

A request names ``task``, ``task@3``, ``task@alias`` or nothing (the home's live task). Resolving
that in the catalog is a read transaction; the server answers thousands of requests between two
promotions, so answers are kept in memory and dropped whenever the catalog changes.

On SQLite the change is seen through ``PRAGMA data_version`` on one long-lived connection of the
resolver's own: SQLite bumps it whenever another connection (this process's or another
``mgr``'s) commits, and reading it costs a few microseconds and no transaction. A promotion is
therefore served by the first request that starts after it commits. Other databases (PostgreSQL)
have no such counter here: every request resolves in a transaction, as before.
"""

from __future__ import annotations

import sqlite3
import threading
import urllib.parse
from collections.abc import Callable

from manager.catalog import Catalog
from manager.catalog.db import sqlite_file
from manager.catalog.deployment import host_deployments
from manager.catalog.lineage import classes_of
from manager.catalog.refs import VersionRef, resolve_version
from manager.errors import BadInput, MgrError
from manager.names import Selector, parse_version_selector
from manager.serve.errors import fresh, status_of

Resolved = tuple[VersionRef, list[str]]


def resolve(catalog: Catalog, target: str | None) -> Resolved:
    """The version a request names (None: the home's live task), checked servable, and its
    class names: one read transaction.

    The checks are the catalog's own (`resolve_version`, as ``mgr switch`` and ``mgr predict``
    use): a bad name is BadInput, a task or version not there NotFound, one not ready or not
    bound Conflict; the server's handlers turn each kind into its status (``serve.errors``).
    """
    with catalog.session(write=False) as s:
        name: str
        selector: Selector
        if target is None:  # the one task live in this home (one per backbone: must be one)
            live = [d.version for d in host_deployments(s, catalog.home.host) if d.version]
            if len(live) != 1:
                names = ", ".join(sorted(f"{v.task.name}@{v.number}" for v in live))
                many = f"{len(live)} are live ({names})" if live else "none is live"
                raise BadInput(f"no task given and {many}: pass a task")
            name, selector = live[0].task.name, live[0].number
        else:
            name, selector = parse_version_selector(target)
        ref = resolve_version(s, name, selector)
        return ref, classes_of(s, ref.id)  # its own set: labels may have grown


class Resolver:
    """`resolve` with answers (and refusals that are the request's fault, 4xx) cached until the
    catalog changes."""

    MAX_ENTRIES = 4096  # distinct names asked for; past it the view starts again

    def __init__(self, catalog: Catalog, count: Callable[[str], None] = lambda field: None):
        self.catalog = catalog
        self.count = count
        self._lock = threading.Lock()
        self._cache: dict[str | None, Resolved | MgrError] = {}
        self._version: int | None = None
        self._conn: sqlite3.Connection | None = None
        path = sqlite_file(str(catalog.engine.url))
        if path is not None:
            # Read-only, autocommit: the PRAGMA never opens a transaction that would pin a
            # snapshot or hold a lock against writers.
            try:
                self._conn = sqlite3.connect(
                    f"file:{urllib.parse.quote(str(path))}?mode=ro",
                    uri=True,
                    check_same_thread=False,
                    isolation_level=None,
                )
                self._data_version()
            except sqlite3.Error:  # e.g. a WAL catalog on a read-only home: resolve per request
                self.close()

    @property
    def cached(self) -> bool:
        """Whether answers are kept between requests (SQLite)."""
        return self._conn is not None

    def _data_version(self) -> int:
        assert self._conn is not None
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def __call__(self, target: str | None) -> Resolved:
        """The version ``target`` names now; MgrError as `resolve`."""
        if self._conn is None:
            self.count("resolver_refreshes")
            return resolve(self.catalog, target)
        hit = None
        with self._lock:
            try:
                version: int | None = self._data_version()
            except sqlite3.Error:
                version = None
            if version is not None:
                if version != self._version or len(self._cache) > self.MAX_ENTRIES:
                    self._cache.clear()
                    self._version = version
                hit = self._cache.get(target)
        if version is None:  # the counter is unreadable now: no cache, a transaction per request
            self.count("resolver_refreshes")
            return resolve(self.catalog, target)
        if hit is None:
            self.count("resolver_refreshes")
            try:
                hit = resolve(self.catalog, target)
            except MgrError as exc:
                if status_of(exc) >= 500:  # the server's trouble (a damaged catalog): not kept
                    raise
                hit = exc
            with self._lock:
                if self._version == version:  # not stale: nothing committed since the read
                    self._cache[target] = hit
        else:
            self.count("resolver_hits")
        if isinstance(hit, MgrError):
            raise fresh(hit)
        return hit

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
