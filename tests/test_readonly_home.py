"""A read-only home (issue 18): commands that only read work; writers say it is read-only.

The home lives on a small tmpfs remounted read-only (as root), else in a folder without write
permission (another user); skipped only where neither can make it read-only (root without mount).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import assert_clean_error
from switch_helpers import copy_home, fork_mgr, one_thread, template_home  # noqa: F401


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def ro_home(tmp_path_factory) -> Path:
    """One read-only home for the module: nothing here can change it."""
    template = template_home(tmp_path_factory.getbasetemp())
    mnt = tmp_path_factory.mktemp("ro") / "mnt"
    mnt.mkdir()
    if os.geteuid() == 0:
        if not _mount("-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)):
            pytest.skip("cannot mount a tmpfs here (root without mount rights)")
        try:
            home = copy_home(template, mnt / "home")
            fork_mgr(home, "switch", "shapes@1")  # live files, so status has something to check
            if not _mount("-o", "remount,ro", str(mnt)):
                pytest.skip("cannot remount a tmpfs read-only here")
            yield home
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        return
    home = copy_home(template, mnt / "home")
    fork_mgr(home, "switch", "shapes@1")
    for p in [home, *[q for q in home.rglob("*") if q.is_dir()]]:
        p.chmod(0o555)
    try:
        yield home
    finally:
        for p in [home, *[q for q in home.rglob("*") if q.is_dir()]]:
            p.chmod(0o755)
        shutil.rmtree(home, ignore_errors=True)


def test_readers_work_on_a_read_only_home(ro_home: Path) -> None:
    def read(*args: str):
        return fork_mgr(ro_home, *args, "--json").json()

    assert read("status")["task"] == "shapes"
    assert read("verify")["ok"] is True
    assert [v["number"] for v in read("versions", "shapes")] == [1]
    assert read("history")
    assert "shapes" in {t["name"] for t in read("task", "list")}


@pytest.mark.parametrize(
    "args",
    [
        ("task", "add", "new", "--dataset", "synthetic", "--weights", "random"),
        ("switch", "pets3@1"),
        ("budget", "set", "1MB"),
    ],
)
def test_writers_say_the_home_is_read_only(ro_home: Path, args) -> None:
    proc = fork_mgr(ro_home, *args, ok=False)
    assert_clean_error(proc)
    assert "read-only" in proc.stderr
