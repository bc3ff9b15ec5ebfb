"""A full disk (issue 18): one line naming what was being written and about how much to free,
never a traceback, and nothing lost: the catalog, the artifacts and the live files stay
consistent, and the command works once space is freed.

The home lives on a small tmpfs (as root), filled up to the byte with a filler file; skipped
where no tmpfs can be mounted.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import assert_clean_error
from switch_helpers import fork_mgr, one_thread, template_home  # noqa: F401

from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store

TINY = "deit_tiny_patch16_224:img_size=32,depth=2"


@pytest.fixture
def disk(tmp_path: Path):
    """A 32 MB tmpfs, unmounted after the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                          capture_output=True)  # fmt: skip
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the disk's free space."""
    st = os.statvfs(disk)
    free = st.f_bavail * st.f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, max(free - leave, 1))
    return filler


def snapshot(home: Path) -> dict[str, str]:
    out = {}
    for folder in ("artifacts", "backbones"):
        for p in sorted((home / folder).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(home))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def no_space(proc, what: str) -> None:
    assert_clean_error(proc)
    assert f"no space left on device while writing {what}" in proc.stderr, proc.stderr
    assert "MB and rerun" in proc.stderr


@pytest.fixture
def trained(disk: Path, tmp_path_factory) -> Path:
    home = disk / "home"
    shutil.copytree(template_home(tmp_path_factory.getbasetemp()), home,
                    ignore=shutil.ignore_patterns(".complete"))  # fmt: skip
    return home


def test_switch_and_status_on_a_full_disk(trained: Path, disk: Path) -> None:
    before = snapshot(trained)
    filler = fill(disk, 1_000_000)  # the live copy needs the backbone's 4 MB
    no_space(fork_mgr(trained, "switch", "shapes@1", ok=False), "the live weights")
    status = fork_mgr(trained, "status", ok=False)  # recovery retries the copy
    assert "Traceback" not in status.stderr
    assert "no space left on device while writing the live weights" in status.stderr
    filler.unlink()
    assert fork_mgr(trained, "status", "--json").json()["task"] == "shapes"  # finished now
    assert fork_mgr(trained, "verify", "--json").json()["ok"] is True
    assert snapshot(trained) == before


def test_full_fine_tuning_checkpoint_on_a_full_disk(trained: Path, disk: Path) -> None:
    before = snapshot(trained)
    fill(disk, 5_000_000)  # the model fits; model + AdamW state (about 3x) does not
    proc = fork_mgr(trained, "train", "shapes", "--method", "full", "--epochs", "1",
               "--batch-size", "48", ok=False)  # fmt: skip
    no_space(proc, "the training checkpoint")
    assert [v["number"] for v in fork_mgr(trained, "versions", "shapes", "--json").json()] == [1]
    assert fork_mgr(trained, "verify", "--json").json()["ok"] is True
    assert snapshot(trained) == before


def test_materialising_the_backbone_on_a_full_disk(disk: Path) -> None:
    home = disk / "home"
    fork_mgr(home, "task", "add", "shapes", "--dataset", "synthetic:per_class=8",
             "--backbone", TINY, "--weights", "random")  # fmt: skip
    filler = fill(disk, 1_000_000)
    proc = fork_mgr(home, "train", "shapes", "--epochs", "1", "--batch-size", "48", ok=False)
    no_space(proc, f"the backbone weights of {TINY}")
    assert not list((home / "backbones").glob("*"))
    assert fork_mgr(home, "verify", "--json").json()["ok"] is True
    # Nothing at all left: even reading the catalog says why, not "disk I/O error".
    filler.unlink()
    fill(disk, 0)
    proc = fork_mgr(home, "task", "list", ok=False)
    if proc.returncode != 0:
        assert_clean_error(proc)
        assert "no space left on device" in proc.stderr and "disk I/O" not in proc.stderr


def test_store_names_what_it_was_writing(tmp_path: Path) -> None:
    """The message's parts, from the OS's own ENOSPC (as /dev/full raises it)."""
    store = Store(Home(tmp_path))
    with (
        pytest.raises(MgrError) as err,
        store.atomic(tmp_path / "x", what="the thing", need=10**12),
        open("/dev/full", "wb") as f,
    ):
        f.write(b"x")
        f.flush()
    msg = str(err.value)
    assert msg.startswith(f"no space left on device while writing the thing ({tmp_path / 'x'})")
    assert msg.endswith("MB and rerun") and "free " in msg
    assert not list(tmp_path.glob(".x.tmp-*"))  # the temporary file is gone
