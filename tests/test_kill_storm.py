"""A kill storm: SIGKILLs spread over train, switch, gc and task remove, at random moments.

After every kill the next command (``mgr status``) must find the deployment idle and the live files
verified; ``mgr gc`` then removes whatever the killed process left behind, and ``mgr verify`` must
be clean: every ready version's artifact intact, no file the catalog does not own, the live files
bit-for-bit the merge of the version the catalog says is live. Real processes (forked from one warm
interpreter, see ``switch_helpers.ForkServer``), a real SQLite catalog, real timm models.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import TINY_SPEC
from switch_helpers import (  # noqa: F401  (one_thread is an autouse fixture)
    catalog_versions,
    copy_home,
    fork_server,
    live_file,
    merged,
    one_thread,
    template_home,
    w0,
)

SLOW = "0.003"  # seconds per tensor written by a switch: widens its write phase
KILLS = 50


def _live_is(home: Path, label: str | None) -> bool:
    import torch
    from safetensors.torch import load_file

    want, _ = merged(home, w0(home), catalog_versions(home)[label] if label else None)
    body = load_file(str(live_file(home)))
    return all(torch.equal(body[n], t) for n, t in want.items())


def _check(srv, home: Path) -> None:
    st = srv.run(home, "status", "--json").json()  # the next command: finishes any recovery
    assert st["state"] == "idle", st
    assert st["verified"] in (True, None), st
    srv.run(home, "gc", "--keep", "100")  # orphans of the killed process, if any
    rep = srv.run(home, "verify", "--json", ok=False)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    label = f"{st['task']}@{st['version']}" if st.get("task") else None
    if st["verified"] is not None:
        assert _live_is(home, label), f"live file is not {label}"


@pytest.mark.slow
def test_kill_storm(tmp_path_factory, tmp_path) -> None:
    home = copy_home(template_home(tmp_path_factory.getbasetemp()), tmp_path / "home")
    srv = fork_server()
    rng = random.Random(8)
    tiny = ("--dataset", "synthetic:per_class=4", "--backbone", TINY_SPEC, "--weights", "random")
    train = ("--epochs", "1", "--batch-size", "24")

    srv.run(home, "switch", "shapes")
    windows = {
        "switch": statistics.median(
            srv.run(home, "switch", t, MGR_SWITCH_TEST_SLOWDOWN=SLOW).seconds
            for t in ("digits", "pets3", "shapes")
        ),
        "train": srv.run(home, "train", "shapes", *train, "--no-promote").seconds,
        "gc": srv.run(home, "gc", "--keep", "100").seconds,
    }
    seen: Counter[str] = Counter()
    scratch = 0
    attempts = 0
    while seen["killed"] < KILLS:
        attempts += 1
        assert attempts < 4 * KILLS, seen
        op = rng.choice(["switch", "switch", "train", "gc", "remove"])
        env = {}
        if op == "switch":
            labels = [*catalog_versions(home), None]
            target = rng.choice(labels)
            args = ("switch", target) if target else ("switch", "--none")
            env["MGR_SWITCH_TEST_SLOWDOWN"] = SLOW
            window = windows["switch"]
        elif op == "train":
            args = ("train", rng.choice(["shapes", "shapes"]), *train)
            if rng.random() < 0.5:
                args = (*args, "--no-promote")
            window = windows["train"]
        elif op == "gc":
            args = ("gc", "--keep", str(rng.choice([1, 2])))
            window = windows["gc"]
        else:
            scratch += 1
            name = f"scratch{scratch}"
            srv.run(home, "task", "add", name, *tiny)
            if rng.random() < 0.5:
                srv.run(home, "train", name, *train)
            args = ("task", "remove", name, "-y", "--force")
            window = windows["gc"]
        started = srv.start(home, *args, **env)
        time.sleep(rng.uniform(0.0, window))
        os.kill(started[0], signal.SIGKILL)
        res = srv.wait(started)
        if res.returncode == -signal.SIGKILL:
            seen["killed"] += 1
            seen[f"killed {op}"] += 1
        else:
            seen[f"{op} finished first"] += 1
            assert "Traceback" not in res.stderr, res.stderr
        _check(srv, home)
        # Keep the catalog small enough that gc and verify stay fast.
        if len(catalog_versions(home)) > 12:
            srv.run(home, "gc", "--keep", "2")
    print(dict(seen))
    for op in ("switch", "train", "gc", "remove"):
        assert seen[f"killed {op}"] >= 4, seen
    leftovers = [p for p in home.rglob("*") if p.is_file() and ".tmp-" in p.name]
    assert not leftovers, leftovers
