"""The catalog: tasks, adapter versions, budgets, deployment state and history.

Open it with :func:`open_catalog` (creates and migrates the database on first use), then do
work in ``with catalog.session() as s:`` blocks: one transaction each, committed at the end.
The operation modules (``tasks``, ``versions``, ``budgets``, ...) take that session.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.exc import DatabaseError
from sqlalchemy.orm import Session

from manager.catalog.db import (
    check_reachable,
    damaged_message,
    inspect_sqlite_file,
    is_connection_error,
    is_damage,
    make_engine,
    no_space_catalog_message,
    read_only_url,
    session_scope,
    sqlite_file,
    unreachable_message,
)
from manager.catalog.migrate import ensure_current
from manager.errors import Busy, Corrupt, MgrError
from manager.home import Home
from manager.store.fs import Store, check_user_path, is_no_space, read_only_folder


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


def home_files(home: Home) -> list[Path]:
    """Adapter artifacts and live files in `home`: only a catalog that once existed makes them."""
    store = Store.of(home)
    found: list[Path] = []
    if store.live.is_dir():
        found += sorted(store.live.glob("*.safetensors"))  # the single folder of older homes
        found += sorted(store.live.glob("*/*.safetensors"))
    if store.artifacts.is_dir():
        found += sorted(p for p in store.artifacts.rglob("*") if p.is_file())
    return found


def _refuse_if_lost(home: Home, path: Path, state: str) -> None:
    files = home_files(home)
    if files:
        raise Corrupt(
            f"the catalog {path} is {state} but the home holds {len(files)} artifact/live "
            f"file(s) (e.g. {files[0]}): it was probably lost; restore it",
            hint="or 'mgr db init --force' to start over with an empty catalog",
        )


def _bind_fresh_home(home: Home, engine: Engine) -> None:
    """Record the catalog's id in a home that has none and no files yet (see `identity`): one
    stat per command once it is there."""
    from manager.catalog import identity

    store = Store.of(home)
    if all(v is not None for v in store.read_catalog_ids().values()):
        return
    if identity.home_has_files(store):
        return  # adopted by gc, once the catalog is seen to record them
    with session_scope(engine, write=False) as s:
        cid = identity.catalog_id(s)
    if cid is not None:
        identity.bind_fresh(store, cid)


def open_catalog(
    home: Home, url: str | None = None, migrate: bool = True, allow_lost: bool = False
) -> Catalog:
    """Open the catalog of `home` (URL: `url` > MGR_DB_URL > <home>/catalog.db).

    Creates the home and, with `migrate`, brings the database to the newest revision. A damaged
    SQLite file is reported and never written to; an empty or missing one next to artifacts or
    live files (a lost catalog) is refused unless `allow_lost` (``mgr db init --force``). A server
    that cannot be reached (PostgreSQL) is reported in one line, its password hidden.
    """
    home.ensure()
    url = url or home.db_url
    path = sqlite_file(url)
    if path is not None:
        check_user_path(path, path)  # a name the OS refuses (too long): one line, not an errno
        state = inspect_sqlite_file(path)
        if state != "ok" and not allow_lost:
            _refuse_if_lost(home, path, state)
        if read_only_folder(path.parent):
            if state != "ok":
                raise MgrError(f"the catalog {path} is {state} and its folder is read-only")
            url = read_only_url(path)  # readers work on a read-only home; writers are told
    engine = make_engine(url)
    try:
        if path is None:
            check_reachable(engine)
        if migrate:
            ensure_current(engine, Store.of(home))
            _bind_fresh_home(home, engine)
    except DatabaseError as exc:
        engine.dispose()
        if path is not None and is_no_space(exc, path.parent):
            raise MgrError(no_space_catalog_message(path)) from None
        if is_damage(exc):
            raise Corrupt(damaged_message(path or engine.url, exc)) from None
        if is_connection_error(exc):
            raise Busy(unreachable_message(engine, exc)) from None
        reason = " ".join(str(exc.orig).split())
        raise MgrError(f"cannot open the catalog at {engine.url!r}: {reason}") from exc
    except BaseException:
        engine.dispose()
        raise
    return Catalog(home, engine)
