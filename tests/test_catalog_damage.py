"""A damaged or lost catalog: one line saying what and where, a non-zero exit, and the file left
exactly as it was (mgr must never "repair" the only copy of a user's catalog by overwriting it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from conftest import TINY_SPEC, assert_clean_error

from manager.catalog import open_catalog, tasks
from manager.errors import MgrError
from manager.home import Home

COMMANDS = [
    ("task", "list"),
    ("storage", "--json"),
    ("budget", "set", "1MB"),
    ("db", "current"),
    ("db", "init", "--force"),
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def damage(db: Path, how: str) -> None:
    if how == "truncated":
        with open(db, "r+b") as f:
            f.truncate(4096)
    else:
        db.write_bytes(os.urandom(db.stat().st_size))


@pytest.mark.parametrize("how", ["truncated", "random"])
def test_damaged_catalog_is_reported_and_never_touched(cli, home: Path, how: str) -> None:
    cli("task", "add", "shapes", "--dataset", "synthetic", "--backbone", TINY_SPEC,
        "--weights", "random")  # fmt: skip
    db = home / "catalog.db"
    assert db.stat().st_size > 8192  # several pages: a 4 KiB cut loses tables
    damage(db, how)
    before = digest(db), db.stat().st_size
    for args in COMMANDS:
        proc = cli(*args, ok=False)
        assert_clean_error(proc)
        msg = proc.stderr
        assert f"the catalog {db} is damaged" in msg, msg
        assert "restore it from a backup" in msg and "move it aside" in msg
        assert (digest(db), db.stat().st_size) == before, args


def test_damage_found_inside_a_session_is_one_error(home: Path, monkeypatch) -> None:
    """The file goes bad while a catalog is open (another program, a failing disk)."""
    monkeypatch.delenv("MGR_DB_URL", raising=False)
    cat = open_catalog(Home(home))
    try:
        with cat.session() as s:
            for i in range(30):  # enough rows to spread over several pages
                tasks.add_task(s, name=f"t{i}", dataset="synthetic", class_names=["a", "b"] * 20)
        cat.engine.dispose()  # checkpoints the WAL into the file
        db = home / "catalog.db"
        with open(db, "r+b") as f:  # page 1 (header, schema) intact, the rest garbage
            f.seek(4096)
            f.write(os.urandom(db.stat().st_size - 4096))
        before = digest(db)
        with (
            pytest.raises(MgrError, match=r"is damaged .*restore it from a backup"),
            cat.session(write=False) as s,
        ):
            tasks.list_tasks(s)
    finally:
        cat.close()
    assert digest(db) == before


def _home_with_files(home: Path) -> None:
    (home / "live").mkdir()
    (home / "live" / "backbone.safetensors").write_bytes(b"weights")
    (home / "artifacts" / "pets").mkdir(parents=True)
    (home / "artifacts" / "pets" / "v1.safetensors").write_bytes(b"delta")


@pytest.mark.parametrize("catalog_file", ["empty", "missing"])
def test_lost_catalog_is_refused_until_forced(cli, home: Path, catalog_file: str) -> None:
    _home_with_files(home)
    db = home / "catalog.db"
    if catalog_file == "empty":
        db.write_bytes(b"")
    for args in (("task", "list"), ("db", "init")):
        proc = cli(*args, ok=False)
        assert_clean_error(proc)
        assert f"the catalog {db} is {catalog_file} but the home holds 2" in proc.stderr
        assert "probably lost" in proc.stderr and "'mgr db init --force'" in proc.stderr
        # Nothing was created in its place.
        assert (db.stat().st_size == 0) if catalog_file == "empty" else not db.exists()
    out = cli("db", "init", "--force").stdout
    assert "created an empty catalog" in out
    assert "no tasks" in cli("task", "list").stdout
    assert (home / "live" / "backbone.safetensors").read_bytes() == b"weights"  # left alone
    assert "already exists" in cli("db", "init").stdout


def test_fresh_home_still_initialises(cli, home: Path) -> None:
    (home / "catalog.db").write_bytes(b"")  # e.g. made by `touch`, nothing else here
    (home / "cache").mkdir()  # caches are no sign of a lost catalog
    assert "no tasks" in cli("task", "list").stdout
    assert (home / "catalog.db").stat().st_size > 0
