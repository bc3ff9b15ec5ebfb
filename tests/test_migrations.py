"""Alembic migrations: up, down, up again, and agreement with the ORM models."""

from __future__ import annotations

import socket
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


def test_postgres_head_base_head(pg_url: str) -> None:
    """The same round trip on a real PostgreSQL database, models and migrations in agreement."""
    engine = make_engine(pg_url)
    try:
        assert current_revision(engine) is None
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        assert _diff(engine) == []
        with engine.begin() as conn:  # a second host's row gets a fresh id (the id sequence)
            conn.exec_driver_sql(
                "INSERT INTO deployment (host, state, updated_at) VALUES ('b', 'idle', now())"
            )
            ids = conn.exec_driver_sql("SELECT id, host FROM deployment ORDER BY id").all()
            assert ids == [(1, ""), (2, "b")]
        downgrade(engine, "base")
        assert current_revision(engine) is None
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(engine, "head")
        assert _diff(engine) == []
    finally:
        engine.dispose()


# -- upgrading a populated catalog from revision 0002 ----------------------------------------------

TABLES = ("backbones", "tasks", "adapter_versions", "budgets", "events", "reservations")


def _schema(engine) -> dict[str, tuple]:
    """Every table's columns and the names of its keys, constraints and indexes."""
    insp = inspect(engine)
    out = {}
    for t in insp.get_table_names():
        out[t] = (
            sorted((c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(t)),
            insp.get_pk_constraint(t)["name"],
            sorted(str(c["name"]) for c in insp.get_unique_constraints(t)),
            sorted(str(c["name"]) for c in insp.get_check_constraints(t)),
            sorted(str(c["name"]) for c in insp.get_foreign_keys(t)),
            sorted(str(c["name"]) for c in insp.get_indexes(t)),
        )
    return out


def _rows(engine, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    """Each table's rows, in the given columns (0002's: the upgrade adds some)."""
    with engine.connect() as conn:
        return {
            t: conn.exec_driver_sql(f"SELECT {', '.join(columns[t])} FROM {t} ORDER BY 1").all()
            for t in TABLES
        }


def test_populated_catalog_upgrades_from_0002(tmp_path: Path, tmp_path_factory) -> None:
    """A home with trained versions, budgets, history and a live deployment, its catalog at the
    schema of revision 0002 (the single deployment row): the first command after the upgrade
    keeps every row, the home claims the deployment, and what was live is still live."""
    from switch_helpers import copy_home, fork_server, template_home

    home = copy_home(template_home(tmp_path_factory.getbasetemp()), tmp_path / "home")
    srv = fork_server()
    srv.run(home, "switch", "shapes")
    srv.run(home, "budget", "set", "20MB")
    url = f"sqlite:///{home / 'catalog.db'}"
    engine = make_engine(url)
    fresh = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    try:
        downgrade(engine, "0002")
        upgrade(fresh, "0002")
        assert _schema(engine) == _schema(fresh)  # exactly 0002's schema, with the home's data
        columns = {t: [c["name"] for c in inspect(engine).get_columns(t)] for t in TABLES}
        before = _rows(engine, columns)
        for table in ("backbones", "tasks", "adapter_versions", "budgets", "events"):
            assert before[table], table
        with engine.connect() as conn:
            dep = conn.exec_driver_sql("SELECT id, state, version_id FROM deployment").all()
        assert len(dep) == 1 and dep[0][:2] == (1, "idle") and dep[0][2] is not None
    finally:
        engine.dispose()
        fresh.dispose()

    status = srv.run(home, "status", "--json").json()  # migrates on first use
    assert (status["task"], status["version"], status["verified"]) == ("shapes", 1, True)
    assert srv.run(home, "db", "current").stdout.strip() == f"{head_revision()} (head)"
    engine = make_engine(url)
    try:
        assert _rows(engine, columns) == before  # every row kept, untouched
        with engine.connect() as conn:
            dep = conn.exec_driver_sql("SELECT id, host, version_id FROM deployment").all()
        assert dep == [(1, f"{socket.gethostname()}:{home.resolve()}", dep[0][2])]
    finally:
        engine.dispose()
    assert srv.run(home, "verify", "--json").json()["ok"] is True
