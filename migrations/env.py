"""Alembic environment for the mgr catalog.

Configured from code (``manager.catalog.migrate.alembic_config``); there is no alembic.ini.
When the config carries an engine (``config.attributes["engine"]``) it is used as is, so
SQLite gets the same WAL / busy-timeout / BEGIN IMMEDIATE hooks as the rest of mgr, and
PostgreSQL its writers' advisory lock: a migration is one write transaction that no other writer
interleaves with.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from manager.catalog.db import make_engine
from manager.catalog.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite has no ALTER for most changes; batch mode rebuilds tables instead.
        render_as_batch=True,
        compare_type=True,
        # Our own BEGIN makes SQLite DDL transactional: a failed migration leaves nothing behind.
        transactional_ddl=True if connection.dialect.name == "sqlite" else None,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    owned = engine is None
    if owned:
        engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.connect() as connection:
            _configure(connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        if owned:
            engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
