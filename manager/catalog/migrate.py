"""Alembic, driven from code: the config is built here so migrations work from any cwd."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from manager.catalog.db import BEGIN_OPTION, PG_MIGRATE_LOCK, is_postgres, reader
from manager.errors import MgrError
from manager.store.fs import Store


def _migrations_dir() -> Path:
    """migrations/ as installed from a wheel (manager/_migrations), else the checkout's."""
    package = Path(__file__).resolve().parents[1]
    installed = package / "_migrations"
    return installed if installed.is_dir() else package.parent / "migrations"


MIGRATIONS_DIR = _migrations_dir()


def alembic_config(engine: Engine) -> Config:
    """An Alembic config for the repository's migrations/, running on `engine`."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # '%' is interpolation syntax in Alembic's ConfigParser.
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    cfg.attributes["engine"] = engine  # env.py uses it, with its SQLite hooks
    return cfg


def head_revision() -> str:
    """The newest revision in migrations/."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The database's revision, or None for an empty database."""
    with reader(engine).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Migrate the database up to `revision`."""
    command.upgrade(alembic_config(engine), revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the database down to `revision` ("base" empties it)."""
    command.downgrade(alembic_config(engine), revision)


@contextmanager
def migration_lock(engine: Engine, store: Store) -> Iterator[None]:
    """One migrator at a time: a file lock in the home for SQLite; for PostgreSQL, whose catalog
    other machines share, a session-level advisory lock on the server, held on its own
    connection while the migration runs on others."""
    if not is_postgres(engine):
        with store.lock(store.migrate_lock_file):
            yield
        return
    options = {"isolation_level": "AUTOCOMMIT", BEGIN_OPTION: "DEFERRED"}  # not a writer
    with engine.connect().execution_options(**options) as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_MIGRATE_LOCK})
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_MIGRATE_LOCK})


def ensure_current(engine: Engine, store: Store) -> None:
    """Migrate to head on first use; safe when several processes (or machines, sharing a
    PostgreSQL catalog) start at the same moment.

    A current catalog costs one read. Otherwise the check and the upgrade run under the
    migration lock, so a fresh catalog is migrated by exactly one process while the others wait
    and then find it current.
    """
    head = head_revision()
    if current_revision(engine) == head:
        return
    with migration_lock(engine, store):
        current = current_revision(engine)
        if current == head:
            return
        known = {
            s.revision for s in ScriptDirectory.from_config(alembic_config(engine)).walk_revisions()
        }
        if current is not None and current not in known:
            raise MgrError(
                f"the catalog is at revision {current}, which this mgr does not know "
                f"(its newest is {head}); upgrade mgr"
            )
        upgrade(engine, "head")
