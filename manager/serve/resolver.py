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

from manager.catalog import Catalog, tasks
from manager.catalog.db import sqlite_file
from manager.catalog.deployment import host_deployments
from manager.catalog.lineage import version_classes
from manager.catalog.models import VERSION_READY
from manager.catalog.refs import VersionRef, select_version
from manager.errors import MgrError
from manager.names import parse_version_selector
from manager.serve.scheduler import ServeError

Resolved = tuple[VersionRef, list[str]]


def resolve(catalog: Catalog, target: str | None) -> Resolved:
    """The version a request names (None: the home's live task), checked servable.

    One read transaction; ServeError (4xx) when it names nothing servable.
    """
    with catalog.session(write=False) as s:
        if target is None:  # the one task live in this home (one per backbone: must be one)
            live = [d.version for d in host_deployments(s, catalog.home.host) if d.version]
            if not live:
                raise ServeError(400, "no task given and none is live: pass a task")
            if len(live) > 1:
                names = ", ".join(sorted(f"{v.task.name}@{v.number}" for v in live))
                raise ServeError(
                    400, f"no task given and {len(live)} are live ({names}): pass a task"
                )
            v = live[0]
            task = v.task
        else:
            try:
                name, selector = parse_version_selector(target)
            except MgrError as exc:
                raise ServeError(400, str(exc)) from None
            task = tasks.find_task(s, name)
            if task is None:
                raise ServeError(404, f"unknown task {name!r}")
            if selector is None and task.active_version is None:
                raise ServeError(404, f"task {name!r} has no active version")
            try:  # a number, or an alias ("pets@champion", "pets@candidate")
                v = select_version(s, task, selector)
            except MgrError as exc:
                raise ServeError(404, str(exc)) from None
        if v.status != VERSION_READY:
            raise ServeError(409, f"version {v.number} of {task.name!r} is {v.status}")
        if task.backbone_id is None:
            raise ServeError(409, f"task {task.name!r} is not bound to a backbone")
        return VersionRef.of(v), version_classes(v)  # its own set: labels may have grown


class Resolver:
    """`resolve` with answers (and 4xx refusals) cached until the catalog changes."""

    MAX_ENTRIES = 4096  # distinct names asked for; past it the view starts again

    def __init__(self, catalog: Catalog, count: Callable[[str], None] = lambda field: None):
        self.catalog = catalog
        self.count = count
        self._lock = threading.Lock()
        self._cache: dict[str | None, Resolved | ServeError] = {}
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
        """The version ``target`` names now; ServeError as `resolve`."""
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
            except ServeError as exc:
                if exc.status >= 500:
                    raise
                hit = exc
            with self._lock:
                if self._version == version:  # not stale: nothing committed since the read
                    self._cache[target] = hit
        else:
            self.count("resolver_hits")
        if isinstance(hit, ServeError):
            raise ServeError(hit.status, hit.message)
        return hit

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
