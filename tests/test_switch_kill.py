"""A ``mgr switch`` killed (SIGKILL) at any moment is finished or rolled back by the next ``mgr``
command: the live files then hold exactly the old or the new version, never a mix.

``MGR_SWITCH_TEST_SLOWDOWN`` (test-only, see ``manager/switch/live.py``) sleeps after each tensor
written, so that random kill times land inside the write phase often enough to matter.
"""

from __future__ import annotations

import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import CLI, ROOT
from safetensors.torch import load_file
from switch_helpers import (
    catalog_versions,
    deployment,
    fork_server,
    live_file,
    merged,
    w0,
)

from manager.store.fs import temp_owner

pytestmark = pytest.mark.trained_home  # `home`: a copy of the trained switch template
SLOW = "0.003"  # seconds per tensor: a switch writes ~25-55 tensors


class Expected:
    """Fresh merges (W0 + delta, computed here) of every version, and matching of live files."""

    def __init__(self, home: Path):
        self.home = home
        base = w0(home)
        self.merges = {None: merged(home, base, None)}
        for label, rel in catalog_versions(home).items():
            self.merges[label] = merged(home, base, rel)

    def live(self) -> tuple[dict, dict]:
        return (
            load_file(live_file(self.home)),
            load_file(live_file(self.home, "head")),
        )

    def holds(self, label: str | None, body: dict | None = None) -> bool:
        """Whether the big live file holds exactly ``label``'s merge."""
        body = body if body is not None else self.live()[0]
        want = self.merges[label][0]
        return all(torch.equal(body[n], t) for n, t in want.items())

    def assert_live(self, label: str | None) -> None:
        body, head = self.live()
        assert self.holds(label, body), f"live file is not {label}"
        want_head = self.merges[label][1]
        assert head.keys() == want_head.keys()
        assert all(torch.equal(head[n], t) for n, t in want_head.items())


def args_for(label: str | None) -> tuple[str, ...]:
    return ("switch", label) if label else ("switch", "--none")


def wait_for_switching(home: Path, timeout: float = 20.0) -> None:
    """Until step (a) has committed: the deployment row says 'switching'."""
    deadline = time.monotonic() + timeout
    while deployment(home)["state"] != "switching":
        assert time.monotonic() < deadline, "the switch never reached step (a)"
        time.sleep(0.002)


@pytest.mark.slow
def test_random_kills_never_leave_a_half_applied_switch(home):
    srv = fork_server()
    exp = Expected(home)
    labels = [*catalog_versions(home), None]
    srv.run(home, "switch", "shapes@1")
    current = "shapes@1"
    # How long a paced switch takes, start to exit: kill times are drawn over that window.
    window = statistics.median(
        srv.run(home, *args_for(t), MGR_SWITCH_TEST_SLOWDOWN=SLOW).seconds
        for t in ("digits@2", "pets3@1", None, "shapes@1")
    )
    rng = random.Random(20240)
    seen: Counter[str] = Counter()
    for _ in range(36):
        target = rng.choice([t for t in labels if t != current])
        started = srv.start(home, *args_for(target), MGR_SWITCH_TEST_SLOWDOWN=SLOW)
        time.sleep(rng.uniform(0.0, window))
        os.kill(started[0], signal.SIGKILL)
        killed = srv.wait(started).returncode == -signal.SIGKILL
        dep = deployment(home)
        if not killed:
            seen["finished before the kill"] += 1
        elif dep["state"] == "idle":
            seen["killed before step (a) or after (d)"] += 1
        else:
            seen["killed mid-switch"] += 1
            if not exp.holds(current) and not exp.holds(target):
                seen["left half-applied"] += 1  # what recovery must repair
            if seen["recovery killed too"] < 6 and rng.random() < 0.4:
                rec = srv.start(home, "status", MGR_SWITCH_TEST_SLOWDOWN=SLOW)
                time.sleep(rng.uniform(0.0, window))
                os.kill(rec[0], signal.SIGKILL)
                srv.wait(rec)
                seen["recovery killed too"] += 1
        st = srv.run(home, "status", "--json").json()  # the next mgr command
        assert st["state"] == "idle" and st["verified"] is True, st
        now = f"{st['task']}@{st['version']}" if st["task"] else None
        assert now in (current, target), (now, current, target)
        exp.assert_live(now)  # exactly the old or the new version, bit for bit
        current = now
    print(dict(seen))
    # No temporary files of killed switches left behind (recovery removes the dead writers').
    assert not [p for p in (home / "live").iterdir() if temp_owner(p) is not None]
    # Meaningful: many kills landed inside the protocol, several mid-write.
    assert seen["killed mid-switch"] >= 8, seen
    assert seen["left half-applied"] >= 3, seen


@pytest.mark.slow
def test_real_process_killed_mid_write(home):
    """The same with a plain ``python -m manager switch`` process and ``mgr status`` after it."""
    exp = Expected(home)
    fork_server().run(home, "switch", "pets3@1")
    env = CLI(home).env(MGR_SWITCH_TEST_SLOWDOWN="0.02")
    proc = subprocess.Popen(
        [sys.executable, "-m", "manager", "switch", "digits@2"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_switching(home, timeout=60)
        deadline = time.monotonic() + 30
        while exp.holds("pets3@1"):  # until step (b) has written its first tensor
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.005)
    finally:
        proc.kill()
        proc.wait()
    assert not exp.holds("pets3@1") and not exp.holds("digits@2")  # really half-applied
    res = CLI(home)("status", "--json")
    assert "finished an interrupted switch to digits@2" in res.stderr
    exp.assert_live("digits@2")


def _kill_mid_write(home: Path, target: str) -> None:
    srv = fork_server()
    started = srv.start(home, "switch", target, MGR_SWITCH_TEST_SLOWDOWN="0.02")
    wait_for_switching(home)
    time.sleep(0.1)
    os.kill(started[0], signal.SIGKILL)
    assert srv.wait(started).returncode == -signal.SIGKILL


def test_unreadable_pending_artifact_rolls_back(home):
    exp = Expected(home)
    fork_server().run(home, "switch", "shapes@1")
    _kill_mid_write(home, "pets3@3")
    (home / catalog_versions(home)["pets3@3"]).write_bytes(b"garbage")
    res = fork_server().run(home, "status", "--json")
    assert "rolled back an interrupted switch" in res.stderr
    assert res.json()["verified"] is True and res.json()["task"] == "shapes"
    exp.assert_live("shapes@1")
    last = fork_server().run(home, "history", "--json").json()[-1]
    assert last["kind"] == "switched" and last["details"]["rolled_back"] is True


def test_lost_old_artifact_falls_back_to_a_full_reset(home):
    exp = Expected(home)
    fork_server().run(home, "switch", "digits@1")
    _kill_mid_write(home, "pets3@1")
    (home / catalog_versions(home)["digits@1"]).unlink()  # the old supports are unknown now
    res = fork_server().run(home, "status", "--json")
    assert "finished an interrupted switch to pets3@1" in res.stderr
    exp.assert_live("pets3@1")
    last = fork_server().run(home, "history", "--json").json()[-1]
    assert last["details"]["full_restore"] is True and last["details"]["recovered"] is True
