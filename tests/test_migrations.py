"""Alembic migrations: up, down, up again, and agreement with the ORM models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from conftest import CLI
from sqlalchemy import inspect

from manager.catalog.db import make_engine
from manager.catalog.migrate import current_revision, downgrade, head_revision, upgrade
from manager.catalog.models import Base


def _diff(engine) -> list:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_empty_head_base_head(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert set(inspect(engine).get_table_names()) >= set(Base.metadata.tables)
        assert _diff(engine) == []
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine, "head")
        assert _diff(engine) == []
        with engine.connect() as conn:  # the deployment row comes with the schema
            rows = conn.exec_driver_sql("SELECT id, host, state FROM deployment").all()
            assert rows == [(1, "", "idle")]  # unclaimed until a home opens the catalog
    finally:
        engine.dispose()


def test_models_without_migrations_differ(tmp_path: Path) -> None:
    """The comparison is not vacuous: an empty database differs from the models."""
    engine = make_engine(f"sqlite:///{tmp_path / 'c.db'}")
    try:
        assert len(_diff(engine)) >= len(Base.metadata.tables)
    finally:
        engine.dispose()


def test_db_commands_and_home_resolution(mgr: CLI, home: Path, tmp_path: Path) -> None:
    fresh = mgr.json("db", "current")
    assert fresh["revision"] is None and fresh["head"] == head_revision()
    assert head_revision() in mgr("db", "upgrade").stdout
    assert mgr("db", "current").stdout.strip() == f"{head_revision()} (head)"

    # --home beats MGR_HOME; MGR_DB_URL puts the catalog anywhere.
    other = tmp_path / "other-home"
    elsewhere = tmp_path / "elsewhere.db"
    url = f"sqlite:///{elsewhere}"
    mgr("--home", str(other), "task", "list", MGR_DB_URL=url)
    assert elsewhere.is_file() and other.is_dir() and not (other / "catalog.db").exists()
    assert (
        mgr.json("--home", str(other), "db", "current", MGR_DB_URL=url)["revision"]
        == head_revision()
    )
