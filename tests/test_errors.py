"""Typed errors: each kind of failure raises its own ``MgrError`` subclass, with the same message,
and the CLI still prints it as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TINY_SPEC, assert_clean_error

from manager import errors
from manager.catalog import aliases, budgets, open_catalog, reservations, tasks, versions
from manager.catalog.refs import VersionRef
from manager.errors import (
    BadInput,
    BudgetExceeded,
    Busy,
    Conflict,
    Corrupt,
    Diverged,
    MgrError,
    NotFound,
)
from manager.home import Home
from manager.names import validate_task_name
from manager.store.fs import Store
from manager.units import parse_size

KINDS = (NotFound, Conflict, BudgetExceeded, Corrupt, Diverged, Busy, BadInput)


def test_every_kind_is_an_mgr_error_and_exported() -> None:
    for kind in KINDS:
        assert issubclass(kind, MgrError) and kind is not MgrError
        assert kind.__name__ in errors.__all__
    assert len(set(KINDS)) == 7


@pytest.fixture
def catalog(home: Path):
    cat = open_catalog(Home(home))
    yield cat
    cat.close()


def _task(s, name: str = "pets"):
    return tasks.add_task(
        s, name=name, dataset="synthetic", class_names=["a", "b"], backbone_spec=TINY_SPEC
    )


def _version(s, task, home: Path, data: bytes = b"x" * 100):
    store = Store.of(Home(home))
    number = versions.next_version_number(s, task)
    path = store.artifact(task.name, number)
    store.write_bytes(path, data)
    return versions.add_version(
        s,
        task,
        method="consolidator",
        structure=[[96, False]],
        bytes=len(data),
        content_hash="0" * 64,  # not the data's hash: a corrupt artifact
        path=store.rel(path),
    )


def test_catalog_lookups_raise_not_found(catalog) -> None:
    with catalog.session() as s:
        task = _task(s)
        with pytest.raises(NotFound, match=r"^unknown task 'nope'$") as e:
            tasks.get_task(s, "nope")
        assert e.value.hint == "see 'mgr task list'"  # the CLI's words, apart
        with pytest.raises(NotFound, match="task 'pets' has no version 7"):
            versions.get_version(s, task, 7)
        with pytest.raises(NotFound, match="has no champion yet"):
            aliases.lookup_alias(s, task, "champion")
        with pytest.raises(NotFound, match="has no alias 'stable'"):
            aliases.lookup_alias(s, task, "stable")


def test_name_taken_is_a_conflict_and_bad_names_are_bad_input(catalog) -> None:
    with catalog.session() as s:
        _task(s)
        with pytest.raises(Conflict, match="task 'pets' already exists"):
            _task(s)
    with pytest.raises(BadInput):
        validate_task_name("no spaces allowed")
    with pytest.raises(BadInput):
        parse_size("12 parsecs")


def test_budget_and_a_running_training(catalog, home: Path) -> None:
    with catalog.session() as s:
        task = _task(s)
        _version(s, task, home)
        budgets.set_budget(s, 150, task)
        budgets.check_fits(s, task, 50)  # exactly fits: 100 + 50 <= 150
        with pytest.raises(BudgetExceeded, match="budget is 150 B with 100 B used"):
            budgets.check_fits(s, task, 51)
        budgets.set_budget(s, None, task)
        reservations.reserve(s, task, 10)
        with pytest.raises(Busy, match="task 'pets' is being trained now"):
            reservations.reserve(s, task, 10)


def test_an_artifact_that_does_not_match_its_hash_is_corrupt(catalog, home: Path) -> None:
    from manager.switch.artifacts import load_verified

    with catalog.session() as s:
        ref = VersionRef.of(_version(s, _task(s), home))
    with pytest.raises(Corrupt, match=r"artifact of pets@1 is corrupt \("):
        load_verified(Store.of(Home(home)), ref, "b", "h", {})
    Store.of(Home(home)).unlink(Store.of(Home(home)).resolve(ref.path))
    with pytest.raises(NotFound, match="artifact of pets@1 is missing"):
        load_verified(Store.of(Home(home)), ref, "b", "h", {})


def test_training_that_goes_non_finite_is_diverged() -> None:
    import torch
    from conftest import tiny_vit

    from manager.train.config import TrainConfig
    from manager.train.data import ImageTensors
    from manager.train.loop import fit

    model = tiny_vit(num_classes=2)
    with torch.no_grad():
        model.head.bias.fill_(float("nan"))
    data = ImageTensors(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    cfg = TrainConfig(epochs=1, batch_size=4)
    with pytest.raises(Diverged, match="training diverged: the loss is nan at epoch 1, step 1"):
        fit(model, data, cfg, lr=1e-3, mean=torch.zeros(3), std=torch.ones(3))


def test_the_cli_prints_each_kind_as_one_line(cli) -> None:
    proc = cli("task", "show", "nope", ok=False)
    assert_clean_error(proc)
    assert proc.stderr.strip() == "error: unknown task 'nope'; see 'mgr task list'"
    cli("task", "add", "pets", "--dataset", "synthetic:num_classes=2", "--backbone", TINY_SPEC)
    proc = cli("task", "add", "pets", "--dataset", "synthetic:num_classes=2", ok=False)
    assert_clean_error(proc)
    assert proc.stderr.strip() == "error: task 'pets' already exists"
    proc = cli("versions", "pets@stable", ok=False)
    assert_clean_error(proc)
