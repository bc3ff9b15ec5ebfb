"""Engines and sessions for the catalog: one writer at a time, on SQLite and on PostgreSQL.

SQLite: WAL (readers never block the writer), a 30 s busy timeout (a second `mgr` waits
instead of failing with "database is locked"), foreign keys on, and write transactions that
start with ``BEGIN IMMEDIATE``. pysqlite's own deferred BEGIN takes the write lock only at the
first write, so two processes that both read first deadlock on the lock upgrade and one fails
at once, busy timeout or not (SQLAlchemy's "sqlite_transactions" recipe: we emit BEGIN ourselves).

PostgreSQL (a catalog shared by several machines): the same one-writer model. Every write
transaction starts with ``pg_advisory_xact_lock`` on one key, held until it commits or rolls back,
so a budget pre-check and the row it guards cannot interleave with another writer's, exactly as
under SQLite's write lock; under READ COMMITTED every statement after the lock sees every write
committed before it. Read transactions take no lock and run REPEATABLE READ: one snapshot, as a
SQLite read transaction has. ``postgresql://`` URLs use psycopg 3.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DatabaseError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from manager.errors import BadInput, Busy, Corrupt, MgrError
from manager.store.fs import free_bytes, is_no_space

BUSY_TIMEOUT_MS = 30_000
# Execution option read by the "begin" hook: "IMMEDIATE" (default, for writers) or "DEFERRED".
BEGIN_OPTION = "mgr_sqlite_begin"

# PostgreSQL advisory lock keys (per database): the writers' lock, and the migration lock.
PG_WRITE_LOCK = 0x6D67_7277_7269_7465  # "mgrwrite"
PG_MIGRATE_LOCK = 0x6D67_726D_6967_7261  # "mgrmigra"
PG_CONNECT_TIMEOUT_S = 10


def _is_memory(url_database: str | None) -> bool:
    return not url_database or url_database == ":memory:" or "mode=memory" in url_database


# SQLite's result codes and messages for a file that is not (or no longer) a sound database.
_DAMAGE_CODES = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
_DAMAGE_TEXT = (
    "file is not a database",
    "database disk image is malformed",
    "malformed database schema",
    "file is encrypted or is not a database",
)


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for other back-ends and in-memory databases."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # e.g. a port that is not a number
        return None
    if parsed.get_backend_name() != "sqlite" or _is_memory(parsed.database):
        return None
    if parsed.query.get("uri") or str(parsed.database).startswith("file:"):
        return None  # a SQLite URI filename: leave its interpretation to SQLite
    return Path(str(parsed.database)).expanduser().absolute()


def is_damage(exc: BaseException) -> bool:
    """Whether a (SQLAlchemy or sqlite3) error says the database file is damaged."""
    orig = getattr(exc, "orig", None) or exc
    if getattr(orig, "sqlite_errorname", None) in _DAMAGE_CODES:
        return True
    text = str(orig).lower()
    return any(t in text for t in _DAMAGE_TEXT)


DEFAULT_CATALOG_NAME = "catalog.db"


def is_read_only(exc: BaseException) -> bool:
    """Whether a SQLite error says the database cannot be written (a read-only home)."""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlite_errorname", None) == "SQLITE_READONLY" or (
        "readonly database" in str(orig).lower()
    )


def read_only_message(where: object) -> str:
    """The one line a writer gets on a read-only home."""
    return (
        f"the catalog {where} is read-only (a read-only home?): this command writes; "
        "commands that only read (status, verify, versions, history, task list) work there"
    )


def no_space_catalog_message(path: Path) -> str:
    """A catalog that cannot write for want of space (SQLite says "disk I/O error")."""
    free = free_bytes(path.parent)
    shown = f" ({free // 1000} kB free)" if free is not None else ""
    return f"no space left on device for the catalog {path}{shown}; free some space and rerun"


def damaged_message(where: object, reason: object) -> str:
    """The one line a damaged catalog is reported with: what, where, and what to do."""
    reason = " ".join(str(getattr(reason, "orig", None) or reason).split())
    return (
        f"the catalog {where} is damaged ({reason}); mgr leaves it untouched: restore it from a "
        f"backup, or move it aside (mv {where} {where}.damaged) to start a fresh catalog"
    )


def not_a_catalog_message(path: Path) -> str:
    """A file that never was a SQLite database, named by a URL: nothing to advise moving."""
    return (
        f"{path} is not a SQLite database, so not a catalog mgr made; mgr leaves it untouched: "
        "check MGR_DB_URL"
    )


def _header_problem(path: Path) -> str | None:
    """Why the file's SQLite header says it is damaged (not SQLite, or truncated); None if sound.

    O(1): the 100-byte header and the file size, so every command can afford it whatever the
    catalog's size (a full ``PRAGMA quick_check`` reads every page).
    """
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(b"SQLite format 3\x00"):
        return "file is not a database"
    page = int.from_bytes(header[16:18], "big")
    page = 65536 if page == 1 else page
    pages = int.from_bytes(header[28:32], "big")
    # The in-header size is only valid when the change counter matches version-valid-for.
    if header[24:28] == header[92:96] and path.stat().st_size < page * pages:
        return f"truncated: {path.stat().st_size} bytes, the header says {page * pages}"
    return None


def _has_sqlite_header(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(16) == b"SQLite format 3\x00"


def inspect_sqlite_file(path: Path) -> Literal["missing", "empty", "ok"]:
    """Check a catalog file without writing to it: ``missing``, ``empty`` (no tables) or ``ok``.

    Raises `MgrError` if the file is damaged. The header is checked first, then a read-only
    connection reads the schema, so nothing (not even a WAL checkpoint on close) can write into
    a damaged file before the read-write engine would have found out.
    """
    if not path.exists():
        return "missing"
    if not path.is_file():
        raise MgrError(f"the catalog {path} is not a file")
    wal = path.with_name(path.name + "-wal")
    if path.stat().st_size == 0 and not (wal.is_file() and wal.stat().st_size > 0):
        return "empty"
    problem = _header_problem(path)
    if problem is not None:
        # mgr only ever creates SQLite files: one without the header that is not the home's
        # own catalog.db (e.g. sqlite:////etc/passwd) was never a catalog; never advise moving it.
        if not _has_sqlite_header(path) and path.name != DEFAULT_CATALOG_NAME:
            raise Corrupt(not_a_catalog_message(path))
        raise Corrupt(damaged_message(path, problem))
    try:
        with closing(
            sqlite3.connect(
                f"file:{quote(str(path))}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000
            )
        ) as conn:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        if is_damage(exc):
            raise Corrupt(damaged_message(path, exc)) from None
        return "ok"  # e.g. busy or no permission: the read-write open reports it in its words
    return "ok" if tables else "empty"


# Deeper JSON than any row mgr writes (a few levels) is a forged or damaged row: read, printed
# or walked it would exhaust Python's recursion limit.
MAX_JSON_DEPTH = 64


def _json_depth_over(value: Any, limit: int) -> bool:
    """Whether a decoded JSON value nests deeper than ``limit`` (iterative: no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                return True
            items = v.values() if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items if isinstance(x, (dict, list)))
    return False


def json_loads(text: str | bytes) -> Any:
    """The catalog's JSON columns, decoded; a value nested absurdly deep is a damaged row."""
    try:
        value = json.loads(text)
    except RecursionError:
        value, deep = None, True
    else:
        deep = _json_depth_over(value, MAX_JSON_DEPTH)
    if deep:
        raise Corrupt(
            f"the catalog holds a damaged row: a JSON value nested more than {MAX_JSON_DEPTH} "
            "levels deep (mgr writes a few); mgr leaves it untouched: restore the catalog from "
            "a backup"
        )
    return value


def read_only_url(path: Path) -> str:
    """A SQLite URL that reads ``path`` without creating anything beside it.

    A WAL database opened read-write (or ``mode=ro``) needs its ``-shm`` file, which a read-only
    folder cannot hold; ``immutable=1`` reads the file as it is, taking no locks: right for a
    home nobody can write either.
    """
    return f"sqlite:///file:{quote(str(path))}?immutable=1&uri=true"


def _on_sqlite_connect(dbapi_conn: Any, _record: Any, memory: bool, read_only: bool) -> None:
    # Take BEGIN away from pysqlite: the "begin" hook below emits it.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        if read_only:
            return
        if not memory:
            _switch_to_wal(cur)
    finally:
        cur.close()


def _switch_to_wal(cur: sqlite3.Cursor) -> None:
    """Put the file in WAL mode (persistent: done once per file), waiting out other writers.

    The switch reads the header under a shared lock and then upgrades it; SQLite refuses that
    upgrade at once while another connection holds the write lock (it would deadlock), without
    calling the busy handler. Two processes opening a fresh home together hit exactly that, so
    the switch is retried here until the busy timeout, as any other statement would wait.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    pause = 0.005
    while cur.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            cur.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", None) != "SQLITE_BUSY":
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)


def _on_sqlite_begin(conn: Any) -> None:
    mode = conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _on_pg_begin(conn: Any) -> None:
    if conn.get_execution_options().get(BEGIN_OPTION, "IMMEDIATE") == "IMMEDIATE":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({PG_WRITE_LOCK})")


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


def make_engine(url: str) -> Engine:
    """An engine for any SQLAlchemy URL; SQLite ones get WAL, busy timeout, FKs, BEGIN IMMEDIATE;
    PostgreSQL ones psycopg 3 and the writers' advisory lock."""
    try:
        parsed = make_url(url)
        backend = parsed.get_backend_name()
        if backend == "postgresql":
            if parsed.drivername == "postgresql":  # SQLAlchemy's default would be psycopg2
                parsed = parsed.set(drivername="postgresql+psycopg")
            args = (
                {}
                if "connect_timeout" in parsed.query
                else {"connect_timeout": PG_CONNECT_TIMEOUT_S}
            )
            engine = create_engine(parsed, connect_args=args, json_deserializer=json_loads)
            event.listen(engine, "begin", _on_pg_begin)
            return engine
        if backend != "sqlite":
            return create_engine(parsed)
        engine = create_engine(
            parsed,
            connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
            json_deserializer=json_loads,
        )
    except (ArgumentError, NoSuchModuleError, ImportError, ValueError) as exc:
        reason = str(exc)
        if isinstance(exc, ValueError) and "int()" in reason:  # SQLAlchemy's int(port)
            reason = "the port is not a number"
        raise BadInput(f"bad catalog URL {_shown(url)}: {reason}") from None
    memory = _is_memory(parsed.database)
    read_only = parsed.query.get("immutable") == "1" or parsed.query.get("mode") == "ro"
    event.listen(engine, "connect", lambda c, r: _on_sqlite_connect(c, r, memory, read_only))
    event.listen(engine, "begin", _on_sqlite_begin)
    return engine


def _shown(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return repr(url.split("@")[-1]) if "@" in url else repr(url)


def reader(engine: Engine) -> Engine:
    """The same engine for shared, read-only use: SQLite transactions start deferred, PostgreSQL
    ones take no lock and see one snapshot (REPEATABLE READ)."""
    if is_postgres(engine):
        return engine.execution_options(
            isolation_level="REPEATABLE READ", **{BEGIN_OPTION: "DEFERRED"}
        )
    return engine.execution_options(**{BEGIN_OPTION: "DEFERRED"})


def _pg_reason(exc: BaseException) -> str:
    """The useful part of a psycopg connection error, on one line ("connection refused")."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    text = text.removeprefix("connection failed: ")
    if " failed: " in text:
        text = text.rsplit(" failed: ", 1)[1]
    text = " ".join(text.replace("FATAL:", "").split())
    return text[:1].lower() + text[1:]


def is_connection_error(exc: BaseException) -> bool:
    """Whether a PostgreSQL error says the server cannot be reached (or was lost), not a query's
    fault: no SQLSTATE (a client-side failure), class 08 (connection), 57P (shut down), 28 (auth),
    3D000 (no such database)."""
    orig = getattr(exc, "orig", None)
    if not isinstance(exc, DBAPIError) or not type(orig).__module__.startswith("psycopg"):
        return False
    state = getattr(orig, "sqlstate", None)
    if state is None:
        return type(orig).__name__ == "OperationalError"
    return state.startswith(("08", "57P", "28")) or state == "3D000"


def unreachable_message(engine: Engine, exc: BaseException) -> str:
    """``cannot reach the catalog at <url, password hidden>: <reason>``."""
    url = engine.url.set(drivername=engine.url.get_backend_name())
    return (
        f"cannot reach the catalog at {url.render_as_string(hide_password=True)}: {_pg_reason(exc)}"
    )


def check_reachable(engine: Engine) -> None:
    """Connect once (the pool keeps the connection); MgrError in one line if that fails."""
    try:
        with engine.connect():
            pass
    except DBAPIError as exc:
        if is_connection_error(exc):
            raise Busy(unreachable_message(engine, exc)) from None
        raise


@contextmanager
def session_scope(engine: Engine, write: bool = True) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception.

    ``write=False`` opens a read transaction that does not take SQLite's write lock.
    Objects stay usable after the commit (expire_on_commit=False), e.g. for printing.
    """
    bind = engine if write else reader(engine)
    factory = sessionmaker(bind=bind, expire_on_commit=False)
    try:
        with factory() as session, session.begin():
            yield session
    except DatabaseError as exc:
        if is_postgres(engine):
            if is_connection_error(exc):  # the server went away (or restarted) mid-command
                raise Busy(unreachable_message(engine, exc)) from None
            raise
        where = sqlite_file(engine.url.render_as_string(hide_password=False))
        if where is not None and is_no_space(exc, where.parent):
            raise MgrError(no_space_catalog_message(where)) from None
        if is_read_only(exc):
            db = str(engine.url.database or "")
            where = unquote(db[5:]) if db.startswith("file:") else db  # see read_only_url
            raise MgrError(read_only_message(where)) from None
        # A file damaged while in use (or by another program) is not a bug in mgr.
        if is_damage(exc):
            where = sqlite_file(engine.url.render_as_string(hide_password=False))
            raise Corrupt(damaged_message(where or engine.url, exc)) from None
        raise
