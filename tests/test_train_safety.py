"""The trainer refuses what would lose data or waste a run, through the real CLI.

Each case was reproduced on the trainer before it was split: a linked artifacts folder was
overwritten and then deleted, a linked run folder was written outside the home, a diverged run
recorded (and activated) an all-NaN delta, an absurd LoRA rank trained for minutes into gigabytes,
and concurrent trainings all passed the budget pre-check and were refused only after training.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC, assert_clean_error, tiny_vit

from manager.errors import MgrError

SMALL = "synthetic:per_class=8"


def add_task(mgr, name: str, dataset: str = SMALL, *extra: str) -> None:
    mgr("task", "add", name, "--dataset", dataset, "--backbone", TINY_SPEC,
        "--weights", "random", *extra)  # fmt: skip


def files_under(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def reservation_rows(home: Path) -> list[tuple]:
    con = sqlite3.connect(home / "catalog.db")
    try:
        return con.execute("SELECT task_id, bytes, host, pid FROM reservations").fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_linked_artifacts_folder_is_refused_before_training(mgr, home, tmp_path):
    add_task(mgr, "v")
    outside = tmp_path / "V"
    outside.mkdir()
    (outside / "v1.safetensors").write_text("PRECIOUS\n")
    (home / "artifacts").mkdir(exist_ok=True)
    (home / "artifacts" / "v").symlink_to(outside)
    proc = mgr("train", "v", "--epochs", "1", ok=False)
    assert_clean_error(proc)
    assert "outside the manager home" in proc.stderr and "epoch" not in proc.stderr
    assert (outside / "v1.safetensors").read_text() == "PRECIOUS\n"
    assert files_under(outside) == ["v1.safetensors"]
    assert mgr.json("versions", "v") == []


@pytest.mark.slow
def test_linked_run_folder_is_refused(mgr, home, tmp_path):
    add_task(mgr, "r")
    outside = tmp_path / "R"
    outside.mkdir()
    (home / "runs").mkdir()
    (home / "runs" / "r").symlink_to(outside)
    for extra in ([], ["--resume"]):
        proc = mgr("train", "r", "--epochs", "1", *extra, ok=False)
        assert_clean_error(proc)
        assert "outside the manager home" in proc.stderr and "epoch" not in proc.stderr
    assert files_under(outside) == []
    assert mgr.json("versions", "r") == []


@pytest.mark.slow
def test_diverging_run_stops_and_records_nothing(mgr, home):
    add_task(mgr, "nan")
    # A finite but absurd rate: the weights blow up within the first steps.
    proc = mgr("train", "nan", "--epochs", "2", "--batch-size", "8", "--lr", "1e30", ok=False)
    assert_clean_error(proc)
    assert "diverged" in proc.stderr and "nothing was recorded" in proc.stderr
    assert mgr.json("versions", "nan") == []
    assert files_under(home / "artifacts" / "nan") == []
    assert reservation_rows(home) == []  # released on the way out
    # The same task then trains normally: no stale state is in the way.
    assert mgr.json("train", "nan", "--epochs", "1")["version"] == 1


@pytest.mark.slow
def test_oversized_lora_rank_and_groups_are_refused_before_any_data(mgr, home, tmp_path):
    # The task's data is not on disk: reaching the data would be a different error.
    add_task(mgr, "big", "flowers102", "--root", str(tmp_path / "no-data"))
    for args, words in (
        (["--method", "lora", "--lora-rank", "1000"], "LoRA rank 1000 "),
        (["--groups", "100000"], "g=100000"),
        (["--groups", "96,7s"], "g=7"),
    ):
        t0 = time.monotonic()
        proc = mgr("train", "big", "--epochs", "1", *args, ok=False)
        assert_clean_error(proc)
        assert words in proc.stderr and "flowers" not in proc.stderr, proc.stderr
        assert time.monotonic() - t0 < 60
    assert mgr.json("versions", "big") == []
    assert files_under(home / "artifacts") == []


@pytest.mark.slow
def test_concurrent_trainings_reserve_their_bytes_before_training(mgr, home):
    add_task(mgr, "probe")
    size = mgr.json("train", "probe", "--epochs", "1")["bytes"]
    names = ["a", "b", "c"]
    for name in names:
        add_task(mgr, name, "synthetic:per_class=16")
    # Room for one more artifact of this size, not two.
    mgr("budget", "set", str(size + size * 3 // 2))
    t0 = time.monotonic()
    procs = {n: mgr.popen("train", n, "--epochs", "3", "--batch-size", "16") for n in names}
    ended: dict[str, float] = {}
    while len(ended) < len(procs):  # each one's exit time (their output is a few lines)
        assert time.monotonic() - t0 < 600
        for name, proc in procs.items():
            if name not in ended and proc.poll() is not None:
                ended[name] = time.monotonic() - t0
        time.sleep(0.05)
    done = {}
    for name, proc in procs.items():
        out, err = proc.communicate()
        done[name] = (proc.returncode, out, err, ended[name])
    winners = [n for n, d in done.items() if d[0] == 0]
    assert len(winners) == 1, {n: d[2] for n, d in done.items()}
    (winner,) = winners
    for name in set(names) - {winner}:
        code, _, err, seconds = done[name]
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        assert code != 0 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert "budget" in err and "reserved by running trainings" in err, err
        assert "epoch" not in err  # refused before its first epoch
        assert not (home / "runs" / name).exists()  # never checkpointed: never trained
        assert seconds < done[winner][3]
        assert mgr.json("versions", name) == []
    assert "epoch 3/3" in done[winner][2]
    assert [v["number"] for v in mgr.json("versions", winner)] == [1]
    assert reservation_rows(home) == []


@pytest.mark.slow
def test_reservations_of_dead_runs_are_ignored_and_removed(mgr, home):
    add_task(mgr, "s")
    size = mgr.json("train", "s", "--epochs", "1")["bytes"]
    mgr("budget", "set", str(size * 2 + size // 2), "--task", "s")
    con = sqlite3.connect(home / "catalog.db")
    try:
        (task_id,) = con.execute("SELECT id FROM tasks WHERE name = 's'").fetchone()
        # A killed run (its pid is gone) and a live one (this test process) on this host.
        dead = 2**22 + 12345
        assert not Path(f"/proc/{dead}").exists()
        with con:
            con.execute(
                "INSERT INTO reservations (task_id, bytes, host, pid, created_at) "
                "VALUES (?, ?, ?, ?, CURRENT_TIMESTAMP)",
                (task_id, 10 * size, socket.gethostname(), dead),
            )
    finally:
        con.close()
    assert mgr.json("train", "s", "--epochs", "1")["version"] == 2  # the dead run's bytes: ignored
    assert reservation_rows(home) == []  # and its row deleted
    mgr("budget", "set", "none", "--task", "s")
    con = sqlite3.connect(home / "catalog.db")
    try:
        with con:
            con.execute(
                "INSERT INTO reservations (task_id, bytes, host, pid, created_at) "
                "VALUES (?, ?, ?, ?, CURRENT_TIMESTAMP)",
                (task_id, 1, socket.gethostname(), os.getpid()),
            )
    finally:
        con.close()
    proc = mgr("train", "s", "--epochs", "1", ok=False)  # a live run of the same task
    assert_clean_error(proc)
    assert "being trained now" in proc.stderr and "epoch" not in proc.stderr


@pytest.mark.slow
def test_unreadable_checkpoint_is_one_line_and_never_unpickled(mgr, home, tmp_path):
    add_task(mgr, "ck")
    ckpt = home / "runs" / "ck" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    assert_clean_error(mgr("train", "ck", "--epochs", "1", "--resume", ok=False))

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"epoch": 1, "extra": Payload()}, ckpt)
    proc = mgr("train", "ck", "--epochs", "1", "--resume", ok=False)
    assert_clean_error(proc)
    assert not marker.exists()
    assert mgr.json("versions", "ck") == []


# -- the pure pieces, in process ---------------------------------------------------------------


def _tiny_run(method_name: str = "consolidator", **cfg_over):
    from manager.delta.delta import DeltaMeta
    from manager.train.config import TrainConfig
    from manager.train.data import ImageTensors
    from manager.train.methods import get_method
    from manager.train.train_adapter import TrainData, prepare_model

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=gen)
    data = TrainData(
        ImageTensors(images, torch.arange(16) % 3), ImageTensors(images[:6], torch.arange(6) % 3)
    )
    model = tiny_vit(num_classes=3)
    method = get_method(method_name)
    cfg = TrainConfig.from_json(dict(method=method_name, epochs=1, batch_size=8, **cfg_over))
    structure = prepare_model(model, method, cfg)
    meta = DeltaMeta(method_name, TINY_SPEC, "0" * 64, torch.float32, 3)
    return model, method, cfg, data, meta, structure


@pytest.mark.parametrize(
    "over", [{"lr": float("inf")}, {"lr": float("nan")}, {"weight_decay": float("nan")}]
)
def test_train_adapter_refuses_non_finite_settings(over):
    # TrainConfig checks itself: a non-finite rate never reaches the trainer.
    with pytest.raises(MgrError, match="finite"):
        _tiny_run(**over)


def test_train_adapter_is_pure_and_reports_progress():
    from manager.train.loop import EpochEvent, StepEvent
    from manager.train.train_adapter import train_adapter

    model, method, cfg, data, meta, structure = _tiny_run()
    assert structure == ((96, False),)
    events = []
    delta, metrics = train_adapter(
        model, method, cfg, data, "cpu", meta=meta, progress=events.append
    )
    assert delta.nonfinite() == [] and delta.meta.method == "consolidator"
    assert [type(e) for e in events] == [StepEvent, StepEvent, EpochEvent]
    assert (events[0].epoch, events[0].step, events[0].steps) == (1, 1, 2)
    assert events[-1].epoch == events[-1].epochs == 1
    assert metrics["train_images"] == 16 and metrics["eval_images"] == 6
    assert 0.0 <= metrics["top1"] <= 100.0


def test_record_version_refuses_a_non_finite_delta(home):
    from manager.catalog import open_catalog, tasks
    from manager.home import Home
    from manager.registry.record import record_version

    model, method, _, _, meta, _ = _tiny_run()
    delta = method.export(model, meta)
    name = next(iter(delta.whole))
    delta.whole[name][0] = float("nan")
    (bad,) = delta.nonfinite()
    assert bad.endswith(name)
    cat = open_catalog(Home.resolve(home))
    try:
        with cat.session() as s:
            tasks.add_task(s, name="t", dataset="synthetic", class_names=["a", "b", "c"],
                           backbone_spec=TINY_SPEC, weights="random")  # fmt: skip
        with pytest.raises(MgrError, match="NaN or infinite"):
            record_version(cat, "t", delta)
        with cat.session(write=False) as s:
            assert tasks.get_task(s, "t").versions == []
    finally:
        cat.close()
    assert files_under(home / "artifacts") == []
