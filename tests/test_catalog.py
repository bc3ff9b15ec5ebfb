"""Catalog operations in process, on a real SQLite file and on a real PostgreSQL database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from conftest import TINY_SPEC
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from manager.catalog import accounting, budgets, events, open_catalog, tasks, versions
from manager.catalog.deployment import get_deployment, host_deployments
from manager.catalog.models import AdapterVersion, Backbone, Budget, Deployment, Event
from manager.catalog.paramcount import ParamInfo, param_info
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store

SQLITE_ONLY = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def catalog(home: Path, db_url: str):
    """A fresh catalog on each back-end (``db_url``: SQLite, then PostgreSQL)."""
    cat = open_catalog(Home(home), url=db_url)
    yield cat
    cat.close()


def _add(s, name: str = "pets", n: int = 3, **kw):
    return tasks.add_task(
        s, name=name, dataset="synthetic", class_names=[f"c{i}" for i in range(n)], **kw
    )


def _version(s, task, home: Home, size: int, **kw) -> AdapterVersion:
    store = Store.of(home)
    number = versions.next_version_number(s, task)
    path = store.artifact(task.name, number)
    store.write_bytes(path, b"\0" * size)
    return versions.add_version(
        s,
        task,
        method="consolidator",
        structure=[[384, False]],
        bytes=size,
        content_hash="0" * 64,
        path=store.rel(path),
        **kw,
    )


@SQLITE_ONLY
def test_sqlite_connection_settings(catalog) -> None:
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000


@SQLITE_ONLY
def test_write_sessions_begin_immediate(catalog, home: Path) -> None:
    """A write session holds the write lock from its first statement, readers still read."""
    other = sqlite3.connect(home / "catalog.db", timeout=0, isolation_level=None)
    with catalog.session() as s:
        s.execute(select(Event)).all()  # only a read so far, yet the lock is taken
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        assert other.execute("SELECT count(*) FROM tasks").fetchone() == (0,)  # WAL: reads go on
    with catalog.session(write=False) as s:
        s.execute(select(Event)).all()
        other.execute("BEGIN IMMEDIATE")  # a read session does not block writers
        other.execute("ROLLBACK")
    other.close()


def test_wal_switch_waits_for_a_writer_on_a_fresh_file(tmp_path: Path) -> None:
    """Two processes opening a fresh home: one holds the write lock while the other switches the
    file to WAL. SQLite refuses that switch at once (no busy handler for a lock upgrade), so
    without mgr's own wait the second command failed with 'database is locked'."""
    import threading

    from manager.catalog.db import make_engine

    path = tmp_path / "catalog.db"
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE t (a)")  # rollback-journal mode, as a file starts
    writer.execute("BEGIN IMMEDIATE")
    releasing = threading.Event()

    def release() -> None:
        releasing.set()  # first: the waiter may run on the moment COMMIT lets the lock go
        writer.execute("COMMIT")

    timer = threading.Timer(0.3, release)
    timer.start()
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert releasing.is_set()  # it waited for the writer instead of failing
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        timer.join()
        engine.dispose()
        writer.close()


def test_add_list_get_and_duplicate(catalog) -> None:
    with catalog.session() as s:
        t = _add(s, budget_bytes=1000)
        assert t.num_classes == 3 and t.class_names == ["c0", "c1", "c2"]
        assert t.backbone_spec == tasks.DEFAULT_BACKBONE
    with catalog.session() as s:
        assert [t.name for t in tasks.list_tasks(s)] == ["pets"]
        assert budgets.get_budget(s, tasks.get_task(s, "pets")) == 1000
        assert [e.kind for e in events.list_events(s)] == ["task_added", "budget_set"]
    with pytest.raises(MgrError, match="already exists"), catalog.session() as s:
        _add(s)
    with pytest.raises(MgrError, match="unknown task"), catalog.session() as s:
        tasks.get_task(s, "nope")
    with pytest.raises(MgrError, match="bad task name"), catalog.session() as s:
        _add(s, name="Bad Name")


def test_versions_numbering_and_promotion(catalog) -> None:
    with catalog.session() as s:
        t = _add(s)
        v1 = _version(s, t, catalog.home, 100)
        v2 = _version(s, t, catalog.home, 200, parent_id=v1.id)
        assert (v1.number, v2.number) == (1, 2)
        versions.promote(s, t, v2)
    with catalog.session() as s:
        t = tasks.get_task(s, "pets")
        assert t.active_version.number == 2
        assert versions.get_version(s, t, 2).parent.number == 1
        with pytest.raises(MgrError, match="no version 9"):
            versions.get_version(s, t, 9)
        kinds = [e.kind for e in events.list_events(s, "pets")]
        assert kinds == ["task_added", "version_created", "version_created", "promoted"]


def test_budgets_used_headroom_and_fits(catalog) -> None:
    with catalog.session() as s:
        a, b = _add(s, "a", budget_bytes=1000), _add(s, "b")
        _version(s, a, catalog.home, 600)
        _version(s, b, catalog.home, 300)
        deleted = _version(s, b, catalog.home, 5000)
        deleted.status = "deleted"
    with catalog.session() as s:
        a, b = tasks.get_task(s, "a"), tasks.get_task(s, "b")
        assert budgets.used_bytes(s, a) == 600 and budgets.used_bytes(s) == 900
        assert budgets.headroom(s, a) == 400 and budgets.headroom(s, b) is None
        budgets.check_fits(s, a, 400)
        with pytest.raises(MgrError, match=r"its budget is 1\.00 KB with 600 B used"):
            budgets.check_fits(s, a, 401)
        budgets.set_budget(s, 1000)  # global
        assert budgets.headroom(s, b) == 100
        with pytest.raises(MgrError, match="global budget"):
            budgets.check_fits(s, b, 101)
        assert budgets.set_budget(s, 2000) == 1000  # update returns the previous value
        assert budgets.set_budget(s, None, a) == 1000  # clear
        assert budgets.get_budget(s, a) is None and budgets.get_budget(s) == 2000


def test_one_global_budget_row(catalog) -> None:
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add_all([Budget(scope="global", max_bytes=1), Budget(scope="global", max_bytes=2)])
        s.flush()
    with pytest.raises(IntegrityError), catalog.session() as s:  # check: NULL task => global
        s.add(Budget(scope="task:1", task_id=None, max_bytes=1))
        s.flush()


def test_one_deployment_row_per_host_and_backbone(catalog) -> None:
    with catalog.session() as s:  # the migrated single row is claimed by the first host
        dep = get_deployment(s, "a")
        assert (dep.id, dep.host, dep.state, dep.task_id) == (1, "a", "idle", None)
    with catalog.session() as s:
        assert get_deployment(s, "a").id == 1
        other = get_deployment(s, "b")
        assert (other.id, other.host, other.state) == (2, "b", "idle")
    with catalog.session() as s:  # one row per (host, backbone): the blank row takes one
        bb = Backbone(
            timm_name="t", spec="t", weights_source="x", content_hash="ab" * 32,
            param_count=1, bytes=1, path="backbones/x.safetensors",
        )  # fmt: skip
        s.add(bb)
        s.flush()
        assert get_deployment(s, "a", bb.id).id == 1
        bb2 = Backbone(
            timm_name="t", spec="t2", weights_source="x", content_hash="cd" * 32,
            param_count=1, bytes=1, path="backbones/y.safetensors",
        )  # fmt: skip
        s.add(bb2)
        s.flush()
        assert get_deployment(s, "a", bb2.id).id == 3
        assert [d.backbone_id for d in host_deployments(s, "a")] == [bb.id, bb2.id]
        bb_id = bb.id
    with pytest.raises(IntegrityError), catalog.session() as s:
        s.add(Deployment(host="a", state="idle", backbone_id=bb_id))
        s.flush()


def test_remove_cascades_and_history_survives(catalog) -> None:
    with catalog.session() as s:
        t = _add(s, budget_bytes=5000)
        v = _version(s, t, catalog.home, 100)
        versions.promote(s, t, v)
        dep = get_deployment(s, "here")
        dep.task_id, dep.version_id = t.id, v.id
        elsewhere = get_deployment(s, "there")
        elsewhere.task_id, elsewhere.version_id = t.id, v.id
    with pytest.raises(MgrError, match="live on 1 other host"), catalog.session() as s:
        tasks.remove_task(s, "pets", "here", force=True)
    with catalog.session() as s:
        elsewhere = get_deployment(s, "there")
        elsewhere.task_id = elsewhere.version_id = None
    with pytest.raises(MgrError, match="live"), catalog.session() as s:
        tasks.remove_task(s, "pets", "here")
    with catalog.session() as s:
        tasks.remove_task(s, "pets", "here", force=True)
    with catalog.session() as s:
        assert tasks.list_tasks(s) == []
        assert s.scalars(select(AdapterVersion)).all() == []
        assert s.scalars(select(Budget)).all() == []
        dep = get_deployment(s, "here")
        assert (dep.task_id, dep.version_id) == (None, None)
        kinds = [e.kind for e in events.list_events(s, "pets")]
        assert kinds[-1] == "task_removed" and "version_created" in kinds


def test_storage_report(catalog, monkeypatch) -> None:
    info = ParamInfo(params=1_000_000, num_features=100)
    monkeypatch.setattr(accounting, "param_info", lambda spec, cache: info)
    with catalog.session() as s:
        empty = accounting.storage_report(s, catalog.home).to_dict()
        assert empty["tasks"] == [] and empty["totals"]["adapter_bytes"] == 0
        a = _add(s, "a", n=10, budget_bytes=100_000)
        _add(s, "b", n=5)
        v = _version(s, a, catalog.home, 40_000)
        versions.promote(s, a, v)
        budgets.set_budget(s, 1_000_000)
    (catalog.home.root / v.path).unlink()  # a missing artifact is reported, not fatal
    with catalog.session(write=False) as s:
        report = accounting.storage_report(s, catalog.home).to_dict()
    ra, rb = report["tasks"]
    assert ra["backbone_bytes"] == 4_000_000
    assert ra["versions"][0]["pct_of_backbone"] == pytest.approx(1.0)
    assert ra["versions"][0]["active"] and ra["versions"][0]["missing"]
    assert ra["budget_used_pct"] == pytest.approx(40.0)
    assert ra["full_finetune_bytes"] == 4_000_000 + 10 * 101 * 4
    assert rb["versions"] == [] and rb["used_bytes"] == 0 and rb["budget_used_pct"] is None
    tot = report["totals"]
    assert tot["versions"] == 1 and tot["adapter_bytes"] == 40_000
    assert tot["global_budget_used_pct"] == pytest.approx(4.0)
    assert tot["backbone_bytes"] == 4_000_000  # one shared backbone
    assert tot["full_finetune_bytes"] == 2 * 4_000_000 + (10 + 5) * 101 * 4
    assert tot["saved_bytes"] == tot["full_finetune_bytes"] - 4_040_000
    json.dumps(report)


def test_param_info_real_timm_and_cache(tmp_path: Path, monkeypatch) -> None:
    store = Store(Home(tmp_path.resolve()))
    info = param_info(TINY_SPEC, store)
    assert info.num_features == 192 and info.params > 0
    from manager import arch

    monkeypatch.setattr(arch, "meta_model", lambda spec: pytest.fail("cache not used"))
    assert param_info(TINY_SPEC, store) == info
    monkeypatch.undo()
    with pytest.raises(MgrError, match="unknown timm model"):
        param_info("no_such_model_xyz", store)
    with pytest.raises(MgrError, match="cannot be built by timm"):
        param_info("deit_tiny_patch16_224:num_heads=5", store)  # 192 is no multiple of 5
