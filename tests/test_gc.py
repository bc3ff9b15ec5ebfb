"""`mgr gc` against the wrong catalog deletes nothing (issue 18): the home records the id of its
catalog (``<home>/catalog-id``, migration 0006) and gc refuses when they differ, or when a home
from before ids holds files its catalog does not record. On SQLite and on PostgreSQL (a second,
empty database).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from conftest import CLI, assert_clean_error
from switch_helpers import fork_server, one_thread  # noqa: F401

pytestmark = pytest.mark.trained_home  # `home`: a copy of the trained switch template


def snapshot(home: Path) -> dict[str, str]:
    """Every file under the home's managed folders and its sha256."""
    out = {}
    for folder in ("artifacts", "backbones", "live", "runs"):
        for p in sorted((home / folder).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(home))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_a_new_home_records_its_catalog_id(tmp_path: Path) -> None:
    mgr = CLI(tmp_path / "h")
    mgr("task", "list")
    cid = (tmp_path / "h" / "catalog-id").read_text().strip()
    assert len(cid) == 32 and int(cid, 16) >= 0


@pytest.mark.parametrize(
    "other",
    ["memory", pytest.param("file", marks=pytest.mark.slow)],  # file: ~8 s, two homes
)
def test_gc_against_another_catalog_deletes_nothing(home: Path, tmp_path: Path, other) -> None:
    before = snapshot(home)
    assert any(p.startswith("artifacts/") for p in before) and (home / "catalog-id").is_file()
    url = "sqlite://" if other == "memory" else f"sqlite:///{tmp_path / 'other.db'}"
    if other == "file":  # another home's catalog
        CLI(tmp_path / "other-home", MGR_DB_URL=url)("task", "add", "x", "--dataset", "synthetic")
    mgr = CLI(home, MGR_DB_URL=url)
    proc = mgr("gc", ok=False)
    assert_clean_error(proc)
    assert "refusing to collect garbage" in proc.stderr and "catalog-id" in proc.stderr
    assert snapshot(home) == before
    # --dry-run lists what would go, says gc would refuse, and deletes nothing either.
    dry = mgr("gc", "--dry-run")
    assert "would remove leftover file artifacts/" in dry.stdout
    assert "warning: refusing to collect garbage" in dry.stderr
    assert snapshot(home) == before
    # The home's own catalog still collects its garbage.
    stray = home / "artifacts" / "shapes" / "v99.safetensors"
    stray.write_bytes(b"x")
    out = CLI(home)("gc").stdout
    assert "removed leftover file artifacts/shapes/v99.safetensors" in out
    assert not stray.exists() and snapshot(home) == before


def test_a_home_from_before_ids_is_adopted_by_its_catalog_only(home: Path, tmp_path: Path) -> None:
    (home / "catalog-id").unlink()
    before = snapshot(home)
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    CLI(tmp_path / "other-home", MGR_DB_URL=url)("task", "list")
    proc = CLI(home, MGR_DB_URL=url)("gc", ok=False)
    assert_clean_error(proc)
    assert "records none of them" in proc.stderr
    assert snapshot(home) == before and not (home / "catalog-id").exists()
    CLI(home)("gc")  # its own catalog records its files: adopted
    assert snapshot(home) == before and (home / "catalog-id").is_file()


@pytest.mark.slow  # ~7 s; gc against another catalog stays fast
def test_task_remove_through_another_catalog_keeps_the_homes_files(
    home: Path, tmp_path: Path
) -> None:
    """Another catalog with a task of the same name must not remove this home's folder."""
    url = f"sqlite:///{tmp_path / 'other.db'}"
    CLI(tmp_path / "other-home", MGR_DB_URL=url)("task", "add", "shapes", "--dataset", "synthetic")
    other = CLI(home, MGR_DB_URL=url)
    before = snapshot(home)
    proc = other("task", "remove", "shapes", "--yes", ok=False)
    assert_clean_error(proc)
    assert snapshot(home) == before


def test_db_init_force_binds_the_home_to_a_new_catalog(home: Path, tmp_path: Path) -> None:
    """The one explicit way to hand a home's files to another catalog."""
    mgr = CLI(home, MGR_DB_URL=f"sqlite:///{tmp_path / 'new.db'}")
    mgr("db", "init", "--force")
    dry = mgr("gc", "--dry-run", "--json")
    assert '"refused": null' in dry.stdout


def test_gc_against_a_second_empty_postgresql_database(pg_server, tmp_path: Path) -> None:
    first, second = pg_server.create_database(), pg_server.create_database()
    home = tmp_path / "pg-home"
    home.mkdir()
    srv = fork_server()
    srv.run(home, "task", "add", "shapes", "--dataset", "synthetic:per_class=8",
            "--backbone", "deit_tiny_patch16_224:img_size=32,depth=2",
            "--weights", "random", MGR_DB_URL=first)  # fmt: skip
    srv.run(home, "train", "shapes", "--epochs", "1", "--batch-size", "48", MGR_DB_URL=first)
    before = snapshot(home)
    assert any(p.startswith("artifacts/shapes/") for p in before)
    assert any(p.startswith("backbones/") for p in before)
    proc = CLI(home, MGR_DB_URL=second)("gc", ok=False)
    assert_clean_error(proc)
    assert "refusing to collect garbage" in proc.stderr
    assert snapshot(home) == before
    srv.run(home, "gc", MGR_DB_URL=first)
    assert snapshot(home) == before
