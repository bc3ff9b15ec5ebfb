"""Engines and sessions for the catalog, with SQLite set up for several processes at once.

SQLite: WAL (readers never block the writer), a 30 s busy timeout (a second `mgr` waits
instead of failing with "database is locked"), foreign keys on, and write transactions that
start with ``BEGIN IMMEDIATE``. pysqlite's own deferred BEGIN takes the write lock only at the
first write, so two processes that both read first deadlock on the lock upgrade and one fails
at once, busy timeout or not (SQLAlchemy's "sqlite_transactions" recipe: we emit BEGIN ourselves).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from manager.errors import MgrError

BUSY_TIMEOUT_MS = 30_000
# Execution option read by the "begin" hook: "IMMEDIATE" (default, for writers) or "DEFERRED".
BEGIN_OPTION = "mgr_sqlite_begin"


def _is_memory(url_database: str | None) -> bool:
    return not url_database or url_database == ":memory:" or "mode=memory" in url_database


def _on_sqlite_connect(dbapi_conn: Any, _record: Any, memory: bool) -> None:
    # Take BEGIN away from pysqlite: the "begin" hook below emits it.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        # WAL is persistent in the file; switching needs a lock, so only do it once.
        if not memory and cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            cur.execute("PRAGMA journal_mode = WAL")
    finally:
        cur.close()


def _on_sqlite_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite ones get WAL, busy timeout, FKs, BEGIN IMMEDIATE."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed)
        engine = create_engine(parsed, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        raise MgrError(f"bad catalog URL {url!r}: {exc}") from exc
    memory = _is_memory(parsed.database)
    event.listen(engine, "connect", lambda c, r: _on_sqlite_connect(c, r, memory))
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def reader(engine: Engine) -> Engine:
    """The same engine, but its SQLite transactions start deferred (shared, read-only use)."""
    return engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})


@contextmanager
def session_scope(engine: Engine, write: bool = True) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception.

    ``write=False`` opens a read transaction that does not take SQLite's write lock.
    Objects stay usable after the commit (expire_on_commit=False), e.g. for printing.
    """
    bind = engine if write else reader(engine)
    factory = sessionmaker(bind=bind, expire_on_commit=False)
    with factory() as session, session.begin():
        yield session
