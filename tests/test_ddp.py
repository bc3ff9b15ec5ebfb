"""Data-parallel training under torchrun on the CPU (gloo): two processes train what one does,
rank 0 alone records, a refused budget stops both ranks with one error, a killed rank fails the run
and --resume finishes it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CLI, ROOT, TINY_SPEC
from safetensors import safe_open

# 65 images: with --batch-size 16 the last global batch holds one image, so rank 1's share of it
# is padding only; the loss scaling must still give the one-process result.
DATA = "synthetic:num_classes=5,per_class=13"
ARGS = ["--epochs", "2", "--batch-size", "16", "--seed", "3", "--lr", "3e-3", "--device", "cpu"]


def add_task(mgr: CLI, name: str, *extra: str) -> None:
    mgr(
        "task",
        "add",
        name,
        "--dataset",
        DATA,
        "--backbone",
        TINY_SPEC,
        "--weights",
        "random",
        *extra,
    )


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    # --standalone: a rendezvous on a free local port, so parallel runs cannot collide.
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "manager",
        *args,
    ]


def torchrun(mgr: CLI, nproc: int, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        torchrun_cmd(nproc, *args),
        capture_output=True,
        text=True,
        env=mgr.env(OMP_NUM_THREADS="1"),
        timeout=timeout,
        cwd=ROOT,
    )


def tensors(path: str | Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        names = f.keys()
        return {k: f.get_tensor(k) for k in names}


def mgr_lines(stderr: str) -> list[str]:
    """Lines mgr itself printed (torchrun's own failure report aside)."""
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


@pytest.mark.slow
def test_two_processes_train_what_one_does(mgr, tmp_path):
    add_task(mgr, "ddp")
    proc = torchrun(mgr, 2, "train", "ddp", *ARGS, "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count('"version"') == 1, proc.stdout  # rank 1 prints nothing
    out = json.loads(proc.stdout)
    (version,) = mgr.json("versions", "ddp")  # recorded once
    assert version["hyperparams"]["world_size"] == 2
    assert version["hyperparams"]["batch_size"] == 16
    assert not (mgr.home / "runs" / "ddp" / "checkpoint.pt").exists()

    single = CLI(tmp_path / "single")
    single.home.mkdir()
    add_task(single, "ddp")
    one = single.json("train", "ddp", *ARGS)
    a, b = tensors(out["path"]), tensors(one["path"])
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        if name.endswith("attn.qkv.bias"):
            # The key bias's gradient is zero in exact arithmetic (softmax ignores a shift shared
            # by a row's logits): what is left is rounding noise, which Adam scales to steps of
            # up to lr, in any two runs that round differently. Bounded by lr x steps; the query
            # and value biases are compared like every other tensor.
            q, k, v = x.chunk(3)
            q1, k1, v1 = y.chunk(3)
            assert (k - k1).abs().max() <= 3e-3 * 10, name
            x, y = torch.cat([q, v]), torch.cat([q1, v1])
        # The gradient all-reduce sums in another order: rounding differs, nothing else.
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=name)
    assert abs(out["metrics"]["final_loss"] - one["metrics"]["final_loss"]) < 1e-4


@pytest.mark.slow
def test_a_refused_budget_stops_every_rank_with_one_error(mgr, home):
    add_task(mgr, "tight", "--budget", "10KB")
    proc = torchrun(mgr, 2, "train", "tight", *ARGS)
    assert proc.returncode != 0
    lines = mgr_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr  # rank 0 reports; rank 1 exits quietly with it
    assert "budget" in lines[0] and "10.0 KB" in lines[0]
    assert 'File "' + str(ROOT / "manager") not in proc.stderr  # no traceback of mgr's own
    assert "epoch" not in proc.stderr
    assert mgr.json("versions", "tight") == []
    assert not (home / "runs" / "tight").exists()


def _rank_pids(pid: int) -> dict[int, int]:
    """torchrun's workers, by their RANK (read from their environment)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    ranks = {}
    for child in (int(p) for p in path.read_text().split()):
        env = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{child}/environ").read_text().split("\0")
            if "=" in item
        )
        ranks[int(env["RANK"])] = child
    return ranks


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs /proc to find the ranks")
def test_a_killed_rank_fails_the_run_and_resume_finishes_it(mgr, home):
    add_task(mgr, "kill")
    args = ["train", "kill", *ARGS[2:], "--epochs", "30"]
    proc = subprocess.Popen(
        torchrun_cmd(2, *args),
        env=mgr.env(OMP_NUM_THREADS="1", MGR_DIST_TIMEOUT="60"),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt = home / "runs" / "kill" / "checkpoint.pt"
    deadline = time.monotonic() + 240
    while not ckpt.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ranks = _rank_pids(proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGKILL)
    proc.communicate(timeout=120)  # rank 0 stops too: nothing hangs
    assert proc.returncode != 0
    assert mgr.json("versions", "kill") == []
    assert ckpt.exists()
    resumed = mgr.json("train", "kill", *args[2:], "--resume")
    assert resumed["version"] == 1
    assert [v["number"] for v in mgr.json("versions", "kill")] == [1]
    assert not ckpt.exists()


# -- the shards, in process --------------------------------------------------------------------


@pytest.mark.parametrize(("n", "batch", "world"), [(65, 16, 2), (10, 4, 3), (7, 8, 4), (5, 2, 4)])
def test_each_rank_takes_a_disjoint_share_of_every_global_batch(n, batch, world):
    from manager.train.data import IGNORE, ImageTensors, Normalise

    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous()
    data = ImageTensors(images, torch.arange(n))
    norm = Normalise(torch.zeros(3), torch.full((3,), 1 / 255), "cpu")  # x -> x: ids survive

    def shares(rank: int):
        gen = torch.Generator().manual_seed(11)  # every rank seeds alike
        return list(data.epoch(batch, norm, generator=gen, rank=rank, world=world))

    single = list(data.epoch(batch, norm, generator=torch.Generator().manual_seed(11)))
    per_rank = [shares(r) for r in range(world)]
    assert all(len(s) == len(single) for s in per_rank)  # the same number of steps everywhere
    for k, whole in enumerate(single):
        parts = [s[k] for s in per_rank]
        assert len({tuple(p.x.shape) for p in parts}) == 1  # equally shaped
        assert all(p.n == whole.n == len(whole.y) for p in parts)
        real = torch.cat([p.y[p.y != IGNORE] for p in parts])
        assert torch.equal(real, whole.y)  # disjoint, in order, nothing lost
        for p in parts:
            keep = p.y != IGNORE
            assert torch.equal(p.x[keep, 0, 0, 0].long(), p.y[keep])  # images follow labels
