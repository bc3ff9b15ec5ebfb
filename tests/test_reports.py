"""Typed reports: storage, budgets and predictions are dataclasses whose ``to_dict()`` is the
``--json`` output (same keys, same order) and round-trips through ``from_dict``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC, tiny_vit

from manager.catalog import accounting, budgets, open_catalog, tasks, versions
from manager.catalog.accounting import StorageReport, TaskStorage, VersionStorage
from manager.catalog.budgets import BudgetReport, BudgetUsage, TaskBudget
from manager.home import Home
from manager.store.fs import Store

VERSION_KEYS = [
    "number", "method", "status", "active", "bytes", "on_disk_bytes", "missing",
    "pct_of_backbone", "top1",
]  # fmt: skip
TASK_KEYS = [
    "task", "backbone_spec", "backbone_bytes", "active_version", "versions", "used_bytes",
    "pct_of_backbone", "budget_bytes", "budget_used_pct", "full_finetune_bytes",
]  # fmt: skip
TOTAL_KEYS = [
    "tasks", "versions", "adapter_bytes", "global_budget_bytes", "global_budget_used_pct",
    "backbone_bytes", "with_adapters_bytes", "full_finetune_bytes", "saved_bytes",
]  # fmt: skip


@pytest.fixture
def home_with_tasks(home: Path, monkeypatch) -> Home:
    """Two tasks on the tiny backbone, one with a version on disk, and both kinds of budget."""
    monkeypatch.delenv("MGR_DB_URL", raising=False)
    h = Home(home)
    store = Store.of(h)
    cat = open_catalog(h)
    try:
        with cat.session() as s:
            a = tasks.add_task(
                s, name="a", dataset="synthetic", class_names=["x", "y", "z"],
                backbone_spec=TINY_SPEC, budget_bytes=100_000,
            )  # fmt: skip
            tasks.add_task(
                s, name="b", dataset="synthetic", class_names=["p", "q"], backbone_spec=TINY_SPEC
            )
            path = store.artifact("a", 1)
            store.write_bytes(path, b"\0" * 4_000)
            v = versions.add_version(
                s, a, method="consolidator", structure=[[96, False]], bytes=4_000,
                content_hash="0" * 64, path=store.rel(path),
            )  # fmt: skip
            versions.promote(s, a, v)
            budgets.set_budget(s, 1_000_000)
    finally:
        cat.close()
    return h


def test_storage_report_is_typed_and_round_trips(home_with_tasks: Home) -> None:
    cat = open_catalog(home_with_tasks)
    try:
        with cat.session(write=False) as s:
            report = accounting.storage_report(s, home_with_tasks)
    finally:
        cat.close()
    assert isinstance(report, StorageReport)
    a, b = report.tasks
    assert isinstance(a, TaskStorage) and isinstance(a.versions[0], VersionStorage)
    assert (a.task, a.active_version, a.used_bytes, a.budget_bytes) == ("a", 1, 4_000, 100_000)
    assert a.versions[0].on_disk_bytes == 4_000 and not a.versions[0].missing
    assert a.budget_used_pct == pytest.approx(4.0) and b.budget_used_pct is None
    assert report.totals.adapter_bytes == 4_000 and report.totals.versions == 1
    d = report.to_dict()
    assert list(d) == ["tasks", "totals"]
    assert list(d["tasks"][0]) == TASK_KEYS and list(d["tasks"][0]["versions"][0]) == VERSION_KEYS
    assert list(d["totals"]) == TOTAL_KEYS
    assert StorageReport.from_dict(json.loads(json.dumps(d))) == report


def test_budget_report_is_typed_and_round_trips(home_with_tasks: Home) -> None:
    cat = open_catalog(home_with_tasks)
    try:
        with cat.session(write=False) as s:
            report = budgets.budget_report(s)
    finally:
        cat.close()
    assert report.global_budget == BudgetUsage(1_000_000, 4_000)
    assert report.tasks == [TaskBudget("a", 100_000, 4_000), TaskBudget("b", None, 0)]
    assert report.tasks[0].used_pct == pytest.approx(4.0) and report.tasks[1].used_pct is None
    assert report.to_dict() == {
        "global": {"max_bytes": 1_000_000, "used_bytes": 4_000},
        "tasks": [
            {"task": "a", "max_bytes": 100_000, "used_bytes": 4_000},
            {"task": "b", "max_bytes": None, "used_bytes": 0},
        ],
    }
    assert BudgetReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report


def test_cli_json_is_the_reports_to_dict(mgr, home_with_tasks: Home) -> None:
    """The CLI prints exactly ``to_dict()``: what the in-process API returns."""
    cat = open_catalog(home_with_tasks)
    try:
        with cat.session(write=False) as s:
            want_storage = accounting.storage_report(s, home_with_tasks).to_dict()
            want_budgets = budgets.budget_report(s).to_dict()
    finally:
        cat.close()
    assert mgr.json("storage") == want_storage
    assert mgr.json("budget", "show") == want_budgets


def test_predictions_are_typed_and_round_trip(tmp_path: Path) -> None:
    from PIL import Image

    from manager.datasets.transforms import transform_for
    from manager.switch.predict import ClassScore, LiveModel, Prediction, predict_files

    model = tiny_vit(num_classes=4)
    live = LiveModel(model, "t", 1, ["a", "b", "c", "d"], transform_for(model))
    paths = []
    for i in range(2):
        arr = (torch.rand(20, 30, 3, generator=torch.Generator().manual_seed(i)) * 255).byte()
        paths.append(tmp_path / f"im{i}.png")
        Image.fromarray(arr.numpy()).save(paths[-1])
    preds = predict_files(live, paths, top_k=3)
    assert [p.image for p in preds] == [str(p) for p in paths]
    for p in preds:
        assert isinstance(p, Prediction) and all(isinstance(t, ClassScore) for t in p.top)
        probs = [t.probability for t in p.top]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        d = p.to_dict()
        assert list(d) == ["image", "top"]
        assert list(d["top"][0]) == ["class", "index", "probability"]
        assert d["top"][0]["class"] == live.class_names[d["top"][0]["index"]]
        assert Prediction.from_dict(json.loads(json.dumps(d))) == p
