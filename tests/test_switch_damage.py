"""Damage and hostile layouts around the switch, through the real CLI: a catalog path that leads
outside the home, live files that are links, a flipped byte in the live file or in W0, a forced
removal of the live task, files nothing owns, a delta with NaN, and no timm on the switch path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CLI, ROOT, assert_clean_error
from safetensors.torch import load_file
from switch_helpers import (  # noqa: F401
    catalog_versions,
    deployment,
    fork_mgr,
    live_file,
    merged,
    one_thread,
    sql,
    w0,
)

pytestmark = pytest.mark.trained_home  # `home`: a copy of the trained switch template


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backbone_file(home: Path) -> Path:
    (path,) = (home / "backbones").glob("*.safetensors")
    return path


def version_id(home: Path, label: str) -> int:
    task, number = label.split("@")
    ((vid,),) = sql(
        home,
        "SELECT v.id FROM adapter_versions v JOIN tasks t ON t.id = v.task_id "
        "WHERE t.name = ? AND v.number = ?",
        task,
        int(number),
    )
    return vid


def flip_byte(path: Path, offset_from_end: int = 100) -> None:
    """Change one byte in place, as disk rot or a stray write would (same size)."""
    # File times tick with the kernel's clock (a few ms): let the last write's tick pass.
    time.sleep(0.03)
    with open(path, "r+b") as f:
        f.seek(-offset_from_end, os.SEEK_END)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))


def assert_live_is(home: Path, label: str | None) -> None:
    """The live files hold exactly a fresh merge of W0 and ``label``'s delta."""
    rel = catalog_versions(home)[label] if label else None
    want_body, want_head = merged(home, w0(home), rel)
    body = load_file(live_file(home))
    head = load_file(live_file(home, "head"))
    assert body.keys() == want_body.keys() and head.keys() == want_head.keys()
    for n, t in {**want_body, **want_head}.items():
        assert torch.equal({**body, **head}[n], t), n


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


# -- (a) a catalog path outside the home is never deleted ----------------------------------------


@pytest.mark.parametrize("how", ["keep", "deleted", "linked-folder"])
def test_gc_refuses_a_catalog_path_outside_the_home(home, tmp_path, how):
    victim = tmp_path / "victim"
    victim.mkdir()
    precious = victim / "precious.txt"
    precious.write_bytes(b"PRECIOUS")
    vid = version_id(home, "pets3@2")  # not kept by --keep 1: neither newest, active nor live
    if how == "linked-folder":  # a relative path, but through a link that leads outside
        (home / "artifacts/evil").symlink_to(victim, target_is_directory=True)
        rel = "artifacts/evil/precious.txt"
    else:
        rel = os.path.relpath(precious, home)
        assert rel == "../victim/precious.txt"
    status = "ready" if how == "keep" else "deleted"
    sql(home, "UPDATE adapter_versions SET path = ?, status = ? WHERE id = ?", rel, status, vid)
    before = sql(home, "SELECT id, status FROM adapter_versions ORDER BY id")
    args = ("gc", "--keep", "1") if how == "keep" else ("gc",)
    proc = CLI(home)(*args, ok=False)
    assert_clean_error(proc)
    assert "pets3@2" in proc.stderr and "nothing was deleted" in proc.stderr
    assert precious.read_bytes() == b"PRECIOUS"
    assert sql(home, "SELECT id, status FROM adapter_versions ORDER BY id") == before
    if how == "keep":  # verify names the row as bad, without a traceback
        res = fork_mgr(home, "verify", ok=False)
        assert res.returncode == 1 and "BAD       pets3@2" in res.stdout
        assert precious.read_bytes() == b"PRECIOUS"


# -- (b) live files that are links ---------------------------------------------------------------


@pytest.mark.parametrize("link", ["file-outside", "folder-outside", "file-to-w0"])
def test_switch_refuses_live_files_that_are_links(home, tmp_path, link):
    fork_mgr(home, "switch", "shapes")
    outside = tmp_path / "outside"
    outside.mkdir()
    live = live_file(home)
    if link == "file-outside":
        shutil.copyfile(live, outside / "backbone.safetensors")
        live.unlink()
        live.symlink_to(outside / "backbone.safetensors")
    elif link == "folder-outside":
        shutil.move(home / "live", outside / "live")
        (home / "live").symlink_to(outside / "live", target_is_directory=True)
    else:  # inside the home, but onto W0 itself: writes there would change every task
        live.unlink()
        live.symlink_to(backbone_file(home))
    watched = [p for p in [*outside.rglob("*"), backbone_file(home)] if p.is_file()]
    before = {p: sha(p) for p in watched}
    proc = CLI(home)("switch", "pets3@1", ok=False)
    assert_clean_error(proc)
    assert "outside the manager home" in proc.stderr or "symbolic link" in proc.stderr
    if "refusing to use" in proc.stderr:  # the library says what is wrong, the CLI what to type
        assert "; remove the link, then run 'mgr switch --repair'" in proc.stderr
    assert {p: sha(p) for p in watched} == before
    assert deployment(home)["live"] == "shapes@1" and deployment(home)["state"] == "idle"
    st = fork_mgr(home, "status", ok=False)
    assert st.returncode == 1 and "verified:  NO" in st.stdout and "Traceback" not in st.stderr


# -- (c) a damaged live file ---------------------------------------------------------------------


@pytest.mark.slow  # ~8 s; the links test keeps damage in the fast lane
def test_a_damaged_live_file_is_never_trusted(home, tmp_path):
    from PIL import Image

    image = tmp_path / "im.png"
    Image.new("RGB", (40, 40), (120, 30, 200)).save(image)
    fork_mgr(home, "switch", "pets3@1")
    live = live_file(home)
    flip_byte(live)
    st = fork_mgr(home, "status", ok=False)
    assert st.returncode == 1 and "verified:  NO" in st.stdout
    assert "mgr switch --repair" in st.stdout
    proc = CLI(home)("predict", str(image), ok=False)  # never served
    assert_clean_error(proc)
    assert "modified after the last switch" in proc.stderr and "--repair" in proc.stderr
    # A no-op switch does not take the file on trust: it rebuilds from W0 and says so.
    out = fork_mgr(home, "switch", "pets3@1").stdout
    assert "already live" not in out and "rebuilt pets3@1" in out
    assert "modified after the last switch" in out
    assert_live_is(home, "pets3@1")
    assert fork_mgr(home, "status", "--json").json()["verified"] is True
    assert "pets3-c" in fork_mgr(home, "predict", str(image)).stdout
    # Another switch repairs it too (the byte would otherwise stay: it is outside both supports).
    flip_byte(live)
    rep = fork_mgr(home, "switch", "digits@1", "--json").json()
    assert rep["full_restore"] is True and any("modified" in n for n in rep["notes"])
    assert_live_is(home, "digits@1")
    # The cheap check catches it without the full comparison, and --repair rebuilds on demand.
    flip_byte(live)
    st = fork_mgr(home, "status", "--no-verify", "--json", ok=False).json()
    assert st["verified"] is False and "modified after the last switch" in st["problems"][0]
    (rep,) = fork_mgr(home, "switch", "--repair", "--json").json()  # one report per live backbone
    assert (rep["task"], rep["version"], rep["full_restore"]) == ("digits", 1, True)
    assert_live_is(home, "digits@1")
    assert fork_mgr(home, "status", "--json").json()["verified"] is True


def test_a_head_file_without_the_live_record_is_not_trusted(home):
    from safetensors.torch import save_file

    fork_mgr(home, "switch", "digits@2")
    head = live_file(home, "head")
    from safetensors import safe_open

    with safe_open(str(head), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if not k.startswith("live_")}
    save_file(load_file(head), str(head), metadata=meta)  # as an older mgr wrote it
    out = fork_mgr(home, "switch", "digits@2").stdout
    assert "already live" not in out and "rebuilt digits@2" in out
    assert_live_is(home, "digits@2")
    assert "already live" in fork_mgr(home, "switch", "digits@2").stdout


# -- (d) a damaged or missing backbone file ------------------------------------------------------


@pytest.mark.slow  # ~9 s: three damages, each through the CLI
def test_a_damaged_or_missing_backbone_file_is_refused(home):
    fork_mgr(home, "switch", "shapes")
    bb = backbone_file(home)
    live = live_file(home)
    before = sha(live), sha(live_file(home, "head"))
    flip_byte(bb)
    proc = CLI(home)("switch", "pets3@1", ok=False)
    assert_clean_error(proc)
    assert str(bb) in proc.stderr and "corrupt" in proc.stderr
    assert (sha(live), sha(live_file(home, "head"))) == before
    # Put right again (a new mtime, the same content): hashed once, then trusted by mtime.
    flip_byte(bb)
    fork_mgr(home, "switch", "pets3@1")
    assert_live_is(home, "pets3@1")
    ((mtime,),) = sql(home, "SELECT file_mtime_ns FROM backbones")
    assert mtime == bb.stat().st_mtime_ns
    # A row from before the mtime was recorded: hashed once and recorded.
    sql(home, "UPDATE backbones SET file_mtime_ns = NULL")
    fork_mgr(home, "switch", "digits@1")
    assert sql(home, "SELECT file_mtime_ns FROM backbones") == [(bb.stat().st_mtime_ns,)]
    assert_live_is(home, "digits@1")
    bb.unlink()
    proc = CLI(home)("switch", "pets3@1", ok=False)
    assert_clean_error(proc)
    assert "backbone file missing" in proc.stderr and str(bb) in proc.stderr


# -- (e) removing the live task ------------------------------------------------------------------


def test_forced_removal_of_the_live_task_restores_the_backbone_first(home):
    fork_mgr(home, "switch", "pets3@1")
    proc = CLI(home)("task", "remove", "pets3", "--yes", ok=False)
    assert_clean_error(proc)
    assert "is live" in proc.stderr and (home / "artifacts/pets3").is_dir()
    (home / "runs/pets3").mkdir(parents=True, exist_ok=True)
    (home / "runs/pets3/checkpoint.pt").write_bytes(b"a checkpoint")
    out = fork_mgr(home, "task", "remove", "pets3", "--yes", "--force").stdout
    assert "switched to the backbone alone (was pets3@1)" in out and "removed task" in out
    assert sha(live_file(home)) == sha(backbone_file(home))
    assert load_file(live_file(home, "head")) == {}
    st = fork_mgr(home, "status", "--json").json()
    assert st["verified"] is True and st["task"] is None
    assert not (home / "artifacts/pets3").exists() and not (home / "runs/pets3").exists()
    assert fork_mgr(home, "verify", "--json").json()["ok"] is True


# -- store maintenance ---------------------------------------------------------------------------


def test_gc_removes_every_file_nothing_owns(home):
    fork_mgr(home, "switch", "shapes")
    dead = _dead_pid()
    orphans = {
        "artifacts/ghost/v1.safetensors": "removed task",  # a kill after `task remove` committed
        "runs/ghost/checkpoint.pt": "removed task",
        "backbones/0123456789abcdef.safetensors": "no backbone row",
        f"artifacts/digits/.pending-{dead}-00ff00ff.safetensors": f"pid {dead}",
        f"live/.head.safetensors.tmp-{dead}-0a0b0c0d": f"pid {dead}",
        f".catalog.db.tmp-{dead}-01020304": f"pid {dead}",
        "artifacts/digits/v9.safetensors": "no catalog row",
    }
    owned = [
        f"artifacts/digits/.pending-{os.getpid()}-00aa00aa.safetensors",  # a running writer's
        "runs/shapes/checkpoint.pt",  # a task that exists
    ]
    for rel in [*orphans, *owned]:
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_bytes(b"x" * 10)
    res = fork_mgr(home, "verify", ok=False)
    for rel in orphans:
        assert f"UNTRACKED {rel}" in res.stdout
    for rel in owned:
        assert rel not in res.stdout
    assert set(fork_mgr(home, "gc", "--dry-run", "--json").json()["leftover_files"]) == set(orphans)
    assert all((home / rel).exists() for rel in orphans)  # a dry run removes nothing
    rep = fork_mgr(home, "gc", "--json").json()
    reasons = {f["path"]: f["reason"] for f in rep["leftovers"]}
    assert set(reasons) == set(orphans) and rep["leftover_bytes"] == 10 * len(orphans)
    for rel, why in orphans.items():
        assert why in reasons[rel], (rel, reasons[rel])
        assert not (home / rel).exists()
    assert all((home / rel).exists() for rel in owned)
    assert not (home / "artifacts/ghost").exists() and not (home / "runs/ghost").exists()
    assert len(catalog_versions(home)) == 6  # retention kept every version (3 newest each)
    assert fork_mgr(home, "verify", "--json").json()["ok"] is True
    text = fork_mgr(home, "gc").stdout
    assert "removed leftover" not in text and "deleted 0 version(s)" in text


def test_verify_flags_a_delta_with_nonfinite_values(home):
    from safetensors import safe_open
    from safetensors.torch import save

    path = home / catalog_versions(home)["pets3@2"]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    name = next(k for k, t in sorted(tensors.items()) if t.is_floating_point())
    tensors[name].view(-1)[0] = float("nan")
    data = save(tensors, metadata=meta)
    path.write_bytes(data)  # recorded as if it had been trained so: size and sha256 match
    digest = hashlib.sha256(data).hexdigest()
    vid = version_id(home, "pets3@2")
    sql(home, "UPDATE adapter_versions SET bytes = ?, content_hash = ? WHERE id = ?", len(data),
        digest, vid)  # fmt: skip
    res = fork_mgr(home, "verify", ok=False)
    assert res.returncode == 1 and "NONFINITE pets3@2" in res.stdout
    proc = CLI(home)("switch", "pets3@2", ok=False)
    assert_clean_error(proc)
    assert "NaN or infinite" in proc.stderr


# -- (4) the switch path stays light -------------------------------------------------------------

NO_HEAVY = (
    "import atexit, sys\n"
    "atexit.register(lambda: print('HEAVY', sorted(m for m in ('timm', 'torchvision') "
    "if m in sys.modules)))\n"
    "from manager.cli import main\n"
    "main(sys.argv[1:], prog_name='mgr')\n"
)


@pytest.mark.slow  # a cold interpreter per command; test_layout keeps the fast check
def test_switch_imports_neither_timm_nor_torchvision(home):
    env = CLI(home).env()
    sql(home, "UPDATE backbones SET file_mtime_ns = NULL")  # the re-hash path too
    for target in ("shapes", "pets3@1", "digits@2"):
        proc = subprocess.run(
            [sys.executable, "-c", NO_HEAVY, "switch", target],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert "switched to" in proc.stdout and "HEAVY []" in proc.stdout, proc.stdout
