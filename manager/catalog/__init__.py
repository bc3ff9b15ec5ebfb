"""The catalog: tasks, adapter versions, budgets, deployment state and history.

Open it with :func:`open_catalog` (creates and migrates the database on first use), then do
work in ``with catalog.session() as s:`` blocks: one transaction each, committed at the end.
The operation modules (``tasks``, ``versions``, ``budgets``, ...) take that session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from manager.catalog.db import make_engine, session_scope
from manager.catalog.migrate import ensure_current
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store


@dataclass
class Catalog:
    """A migrated catalog database for one home."""

    home: Home
    engine: Engine

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        """One transaction (SQLite: BEGIN IMMEDIATE if `write`, else a deferred read)."""
        with session_scope(self.engine, write=write) as s:
            yield s

    def close(self) -> None:
        self.engine.dispose()


def open_catalog(home: Home, url: str | None = None, migrate: bool = True) -> Catalog:
    """Open the catalog of `home` (URL: `url` > MGR_DB_URL > <home>/catalog.db).

    Creates the home and, with `migrate`, brings the database to the newest revision.
    """
    home.ensure()
    engine = make_engine(url or home.db_url)
    if migrate:
        try:
            ensure_current(engine, Store.of(home))
        except OperationalError as exc:
            engine.dispose()
            raise MgrError(f"cannot open the catalog at {engine.url!r}: {exc.orig}") from exc
    return Catalog(home, engine)
