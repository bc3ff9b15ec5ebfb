"""Alembic, driven from code: the config is built here so migrations work from any cwd."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from manager.catalog.db import reader
from manager.errors import MgrError

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


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
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path`, held for the block (released if the process dies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def ensure_current(engine: Engine, lock_path: Path) -> None:
    """Migrate to head on first use; safe when several processes start at the same moment.

    The check and the upgrade run under one file lock, so a fresh home is migrated by exactly
    one process while the others wait and then find it current.
    """
    head = head_revision()
    with file_lock(lock_path):
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
