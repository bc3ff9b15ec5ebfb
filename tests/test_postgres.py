"""The catalog on a real PostgreSQL server: the CLI end to end on both back-ends, one writer at a
time (concurrent processes, budgets never over-committed), reservations of other machines, and
one clear line when the server cannot be reached.

The server is started once per session by the ``pg_server`` fixture (tests/pg.py); each test gets
a fresh database. Commands run in forked children of a warm interpreter
(``switch_helpers.ForkServer``), except refusals, which run in a plain subprocess.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from conftest import CLI, ROOT, TINY_SPEC, assert_clean_error
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from switch_helpers import fork_server, one_thread  # noqa: F401

from manager.catalog import open_catalog, reservations, tasks
from manager.catalog.db import PG_WRITE_LOCK
from manager.catalog.models import Budget, Event, Reservation, Task
from manager.errors import MgrError
from manager.home import Home

SMALL = "synthetic:per_class=8"


def libpq(url: str) -> str:
    """A SQLAlchemy URL as psycopg's own connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def run(home: Path, *args: str, ok: bool = True, **env: str):
    return fork_server().run(home, *args, ok=ok, **env)


def test_cli_end_to_end_on_both_backends(db_url: str, tmp_path: Path) -> None:
    """task / budget / train / versions / storage / switch / status / verify / gc / history."""
    home = tmp_path / "mgr-home"  # db_url's SQLite file is this home's own catalog
    env = {"MGR_DB_URL": db_url}

    def mgr(*args: str, **kw):
        return run(home, *args, **env, **kw)

    mgr("task", "add", "shapes", "--dataset", SMALL, "--backbone", TINY_SPEC,
        "--weights", "random", "--budget", "5MB")  # fmt: skip
    mgr("task", "add", "spare", "--dataset", "synthetic", "--backbone", TINY_SPEC)
    assert sorted(t["name"] for t in mgr("task", "list", "--json").json()) == ["shapes", "spare"]
    assert "set to 50.0 MB" in mgr("budget", "set", "50MB").stdout
    assert mgr("budget", "show", "--json").json()["global"]["max_bytes"] == 50_000_000

    trained = mgr("train", "shapes", "--epochs", "1", "--batch-size", "48", "--json").json()
    assert trained["version"] == 1
    [v1] = mgr("versions", "shapes", "--json").json()
    assert v1["number"] == 1 and v1["bytes"] == trained["bytes"]
    [row] = [t for t in mgr("storage", "--json").json()["tasks"] if t["task"] == "shapes"]
    assert [v["bytes"] for v in row["versions"]] == [trained["bytes"]]

    assert "switched to shapes@1" in mgr("switch", "shapes").stdout
    status = mgr("status", "--json").json()
    assert (status["task"], status["version"], status["verified"]) == ("shapes", 1, True)
    assert mgr("verify", "--json").json()["ok"] is True
    gc = mgr("gc", "--json").json()
    assert gc["deleted"] == [] and gc["leftovers"] == []
    assert_clean_error(mgr("task", "remove", "shapes", "--yes", ok=False))  # live here
    assert "removed" in mgr("task", "remove", "spare", "--yes").stdout

    events = mgr("history", "--json").json()
    kinds = [e["kind"] for e in events]
    for kind in ("task_added", "budget_set", "version_created", "switched", "task_removed"):
        assert kind in kinds, kinds
    [switched] = [e for e in events if e["kind"] == "switched"]
    assert switched["host"] == f"{socket.gethostname()}:{home.resolve()}"
    # The catalog is where MGR_DB_URL says: on PostgreSQL the home holds no SQLite file.
    assert (home / "catalog.db").exists() is not db_url.startswith("postgresql")


def test_write_sessions_hold_the_writers_lock(pg_url: str, tmp_path: Path) -> None:
    """As SQLite's BEGIN IMMEDIATE: a write session holds the lock from its first statement;
    readers read meanwhile and take no lock."""
    import psycopg

    cat = open_catalog(Home(tmp_path / "h"), url=pg_url)
    try:
        with psycopg.connect(libpq(pg_url), autocommit=True) as other:

            def lock_is_free() -> bool:
                # In autocommit the xact lock, if taken, is released with the statement.
                q = "SELECT pg_try_advisory_xact_lock(%s)"
                return other.execute(q, (PG_WRITE_LOCK,)).fetchone()[0]

            assert lock_is_free()
            with cat.session() as s:
                s.execute(select(Event)).all()  # only a read so far, yet the lock is held
                assert not lock_is_free()
                assert other.execute("SELECT count(*) FROM tasks").fetchone() == (0,)
            assert lock_is_free()
            with cat.session(write=False) as s:
                s.execute(select(Event)).all()
                assert lock_is_free()
                level = s.execute(text("SHOW transaction_isolation")).scalar()
                assert level == "repeatable read"  # one snapshot, as a SQLite read
    finally:
        cat.close()


# Each writer opens the (fresh) catalog, so four processes also race to migrate it, then adds its
# own tasks, each with a budget. At one agreed moment they all start recording 100-byte versions
# of the same shared tasks, round robin, each task with budget room for exactly ROOM of them: the
# pre-check, the numbering and the insert are one write transaction, so no two writers pass the
# same check or take the same number (without the lock, READ COMMITTED lets them do both).
WRITER = r"""
import sys, time
from manager.catalog import budgets, open_catalog, tasks, versions
from manager.errors import MgrError
from manager.home import Home

url, home, who, n, shared, attempts, go = sys.argv[1:8]
cat = open_catalog(Home.resolve(home), url=url)
for i in range(int(n)):
    with cat.session() as s:
        t = tasks.add_task(s, name=f"{who}-{i}", dataset="synthetic", class_names=["a", "b"])
        budgets.set_budget(s, 10_000 + i, t)
time.sleep(max(0.0, float(go) - time.time()))
refused = 0
for i in range(int(attempts)):
    try:
        with cat.session() as s:
            t = tasks.get_task(s, f"shared-{i % int(shared)}")
            budgets.check_fits(s, t, 100)
            number = versions.next_version_number(s, t)
            versions.add_version(
                s, t, method="linear", structure=None, bytes=100, content_hash="0" * 64,
                path=f"artifacts/{t.name}/v{number}.safetensors", number=number,
            )
    except MgrError as exc:
        assert "budget" in str(exc), exc
        refused += 1
print(refused)
"""


@pytest.mark.slow  # many processes
def test_concurrent_writers_from_several_processes(pg_url: str, tmp_path: Path) -> None:
    writers, own, shared, room = 4, 5, 4, 8
    attempts = shared * room  # each writer alone could fill every shared task
    cat = open_catalog(Home(tmp_path / "setup"), url=pg_url)
    with cat.session() as s:
        for i in range(shared):
            tasks.add_task(s, name=f"shared-{i}", dataset="synthetic", class_names=["a", "b"],
                           budget_bytes=100 * room)  # fmt: skip
    cat.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGR_")}
    go = time.time() + 8  # past every writer's start-up and its own tasks
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, pg_url, str(tmp_path / f"h{w}"), f"w{w}",
             str(own), str(shared), str(attempts), str(go)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(writers)
    ]  # fmt: skip
    refused = 0
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert err == "", err
        refused += int(out)
    cat = open_catalog(Home(tmp_path / "check"), url=pg_url)
    try:
        with cat.session(write=False) as s:
            assert s.scalar(select(func.count()).select_from(Task)) == writers * own + shared
            assert s.scalar(select(func.count()).select_from(Budget)) == writers * own + shared
            # Exactly the room of each task, numbered 1..ROOM: no check or number was shared.
            for i in range(shared):
                t = tasks.get_task(s, f"shared-{i}")
                assert sorted(v.number for v in t.versions) == list(range(1, room + 1))
            assert refused == writers * attempts - shared * room
            kinds = s.scalars(select(Event.kind)).all()
            assert kinds.count("task_added") == writers * own + shared
            assert kinds.count("version_created") == shared * room
    finally:
        cat.close()


@pytest.mark.slow  # trains in three homes
def test_three_homes_train_against_a_budget_for_one(pg_url: str, tmp_path: Path) -> None:
    """Three homes (machines) start a training each against one shared catalog and artifact
    root, with budget room for one artifact: exactly one trains, the others are refused before
    their first epoch, and no reservation is left behind."""
    env = {"MGR_DB_URL": pg_url, "MGR_ARTIFACT_ROOT": str(tmp_path / "shared")}
    homes = {n: tmp_path / f"home-{n}" for n in "abc"}
    first = homes["a"]
    run(first, "task", "add", "probe", "--dataset", SMALL, "--backbone", TINY_SPEC,
        "--weights", "random", **env)  # fmt: skip
    size = run(first, "train", "probe", "--epochs", "1", "--json", **env).json()["bytes"]
    for n in homes:
        run(first, "task", "add", n, "--dataset", "synthetic:per_class=16",
            "--backbone", TINY_SPEC, "--weights", "random", **env)  # fmt: skip
    run(first, "budget", "set", str(size + size * 3 // 2), **env)
    srv = fork_server()
    started = {
        n: srv.start(h, "train", n, "--epochs", "3", "--batch-size", "16", **env)
        for n, h in homes.items()
    }
    done = {n: srv.wait(st) for n, st in started.items()}
    winners = [n for n, r in done.items() if r.returncode == 0]
    assert len(winners) == 1, {n: r.stderr for n, r in done.items()}
    for n in set(homes) - set(winners):
        err = done[n].stderr
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "reserved by running trainings" in err and "epoch" not in err, err
        assert not (homes[n] / "runs" / n).exists()
    assert "epoch 3/3" in done[winners[0]].stderr
    # Every artifact and W0 went to the shared root, none into a home.
    shared = tmp_path / "shared"
    assert (shared / "artifacts" / winners[0] / "v1.safetensors").is_file()
    assert len(list((shared / "backbones").glob("*.safetensors"))) == 1
    assert not any((h / "artifacts").exists() or (h / "backbones").exists() for h in homes.values())
    cat = open_catalog(Home(first), url=pg_url)
    try:
        with cat.session(write=False) as s:
            assert s.scalars(select(Reservation)).all() == []
            counts = {n: len(tasks.get_task(s, n).versions) for n in homes}
            assert sorted(counts.values()) == [0, 0, 1]
    finally:
        cat.close()


def test_reservations_of_other_machines_expire(db_url: str, home: Path) -> None:
    """A row of another machine counts until its run removes it or it is a day old; this
    machine's rows are judged by their pid."""
    cat = open_catalog(Home(home), url=db_url)
    now = datetime.now(timezone.utc)
    dead = 2**22 + 12345
    assert not Path(f"/proc/{dead}").exists()
    try:
        with cat.session() as s:
            t = tasks.add_task(s, name="pets", dataset="synthetic", class_names=["a", "b"])
            s.add_all(
                [
                    Reservation(
                        task_id=t.id,
                        bytes=10,
                        host="elsewhere",
                        pid=dead,
                        created_at=now - timedelta(hours=23),
                    ),
                    Reservation(
                        task_id=t.id,
                        bytes=200,
                        host="gone",
                        pid=os.getpid(),
                        created_at=now - reservations.FOREIGN_TTL - timedelta(minutes=1),
                    ),
                    Reservation(
                        task_id=t.id,
                        bytes=3000,
                        host=socket.gethostname(),
                        pid=dead,
                        created_at=now,
                    ),
                ]
            )
        with cat.session() as s:
            assert reservations.reserved_bytes(s) == 10
            assert reservations.purge_stale(s) == 2
        with cat.session() as s:
            assert [r.host for r in s.scalars(select(Reservation))] == ["elsewhere"]
            with pytest.raises(MgrError, match=r"being trained now .* on elsewhere"):
                reservations.reserve(s, tasks.get_task(s, "pets"), 5)
    finally:
        cat.close()


def test_unreachable_catalog_is_one_line_without_the_password(home: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql://mgr:s3cret@127.0.0.1:{port}/catalog"
    proc = CLI(home, MGR_DB_URL=url)("task", "list", ok=False)
    assert_clean_error(proc)
    assert "s3cret" not in proc.stderr
    assert proc.stderr.strip() == (
        f"error: cannot reach the catalog at postgresql://mgr:***@127.0.0.1:{port}/catalog: "
        "connection refused"
    )


def test_missing_database_is_one_line(pg_server, home: Path) -> None:
    proc = CLI(home, MGR_DB_URL=pg_server.url("no_such_db"))("db", "current", ok=False)
    assert_clean_error(proc)
    assert 'database "no_such_db" does not exist' in proc.stderr
