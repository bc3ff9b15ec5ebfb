"""One catalog, many machines: homes sharing a PostgreSQL catalog and an artifact root.

Each home stands for a machine: its own live files and deployment row, the tasks, versions,
budgets and history shared. Trained in one home, switched and served in another, bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC
from sqlalchemy import select
from switch_helpers import fork_server, live_file, one_thread  # noqa: F401

from manager.catalog import open_catalog
from manager.catalog.models import Deployment, Event
from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store

SMALL = "synthetic:per_class=8"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def live(home: Path) -> tuple[str, dict, dict]:
    """The live weights file's sha256; the head file's tensors and metadata, less the local
    file time it records."""
    from safetensors import safe_open

    with safe_open(str(live_file(home, "head")), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "live_mtime_ns"}
        names = f.keys()
        raw = {k: f.get_tensor(k).contiguous().flatten().view(torch.uint8) for k in names}
    head = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in raw.items()}
    return sha(live_file(home)), head, meta


def deployment_row(url: str, home: Path, host: str) -> tuple:
    cat = open_catalog(Home(home), url=url)
    try:
        with cat.session(write=False) as s:
            d = s.scalars(select(Deployment).where(Deployment.host == host)).one()
            return (d.id, d.state, d.task_id, d.version_id, d.backbone_id, d.updated_at)
    finally:
        cat.close()


def test_artifact_root_holds_artifacts_and_confines_catalog_paths(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    store = Store(Home((tmp_path / "h").resolve()).ensure(), artifact_root=root.resolve())
    path = store.artifact("pets", 3)
    store.write_bytes(path, b"delta")
    assert path == root.resolve() / "artifacts/pets/v3.safetensors"
    assert store.rel(path) == "artifacts/pets/v3.safetensors"  # relative to the root
    assert store.resolve("artifacts/pets/v3.safetensors").read_bytes() == b"delta"
    assert store.backbone_file("ab" * 32).parent == root.resolve() / "backbones"
    assert store.live.parent == store.root  # live files stay in the home
    for bad in ("../h/x", "/etc/passwd", "artifacts/../../x"):
        with pytest.raises(MgrError, match="relative to the artifact root"):
            store.resolve(bad)
    (root / "artifacts" / "escape").symlink_to(tmp_path)  # a link out of both roots
    with pytest.raises(MgrError, match="outside the manager home"):
        store.resolve("artifacts/escape/x")
    with pytest.raises(MgrError, match="not under the artifact root"):
        store.rel(store.root / "runs" / "x")  # a home file is no catalog path


def test_other_machines_temporary_files_are_judged_by_age(tmp_path: Path) -> None:
    from manager.store.fs import FOREIGN_TEMP_TTL_S, host_tag, temp_owner, temp_writer_alive

    store = Store(Home((tmp_path / "h").resolve()).ensure())
    dead = 2**22 + 4321
    mine = store.root / f".pending-{os.getpid()}@{host_tag()}-00aa.safetensors"
    mine_dead = store.root / f".pending-{dead}@{host_tag()}-00aa.safetensors"
    theirs = store.root / f".v1.safetensors.tmp-{os.getpid()}@{'0' * 8}-00bb"
    for p in (mine, mine_dead, theirs):
        p.write_bytes(b"x")
    assert temp_owner(theirs) == os.getpid()
    assert temp_writer_alive(mine) and not temp_writer_alive(mine_dead)
    assert temp_writer_alive(theirs)  # another machine's, fresh: its writer may be running
    old = theirs.stat().st_mtime - FOREIGN_TEMP_TTL_S - 60
    os.utime(theirs, (old, old))
    assert not temp_writer_alive(theirs)  # a day old: an orphan
    assert store.pending_artifact("t").name.startswith(f".pending-{os.getpid()}@{host_tag()}-")


@pytest.mark.slow
def test_two_homes_share_one_catalog_and_one_artifact_root(pg_url: str, tmp_path: Path) -> None:
    from PIL import Image

    shared = tmp_path / "shared"
    env = {"MGR_DB_URL": pg_url, "MGR_ARTIFACT_ROOT": str(shared)}
    a, b = tmp_path / "home-a", tmp_path / "home-b"
    host_a = f"{socket.gethostname()}:{a.resolve()}"  # the default host id
    srv = fork_server()

    def in_a(*args: str, **kw):
        return srv.run(a, *args, **env, **kw)

    def in_b(*args: str, **kw):
        return srv.run(b, *args, **env, MGR_HOST="node-b", **kw)

    in_a(
        "task", "add", "shapes", "--dataset", SMALL, "--backbone", TINY_SPEC, "--weights", "random"
    )
    assert (
        in_a("train", "shapes", "--epochs", "1", "--batch-size", "48", "--json").json()["version"]
        == 1
    )
    assert (shared / "artifacts/shapes/v1.safetensors").is_file()

    # B switches to the version A trained: W0 and the artifact come from the shared root.
    assert "switched to shapes@1" in in_b("switch", "shapes@1").stdout
    image = tmp_path / "im.png"
    arr = (torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    Image.fromarray(arr.numpy()).save(image)
    pred = in_b("predict", str(image), "--json").json()
    assert (pred["task"], pred["version"]) == ("shapes", 1)
    in_a("switch", "shapes@1")
    assert live(a) == live(b)  # bit-identical live weights and head on both machines
    assert live(a)[1]  # the head has tensors to compare
    b_live = live(b)

    # A new task with another backbone, trained in B; A switches to it alone.
    in_b("task", "add", "other", "--dataset", SMALL, "--weights", "random",
         "--backbone", "deit_tiny_patch16_224:img_size=32,depth=1")  # fmt: skip
    in_b("train", "other", "--epochs", "1", "--batch-size", "48")
    b_row = deployment_row(pg_url, a, "node-b")
    in_a("switch", "--none")  # A serves the other backbone alone (its own live folder)
    in_a("switch", "other")
    assert live(b) == b_live and deployment_row(pg_url, a, "node-b") == b_row  # B untouched
    sa, sb = in_a("status", "--json").json(), in_b("status", "--json").json()
    assert (sa["task"], sa["version"], sa["verified"]) == ("other", 1, True)
    assert (sb["task"], sb["version"], sb["verified"]) == ("shapes", 1, True)

    # Shared files pass every home's check; gc anywhere keeps what any home has live.
    assert in_b("verify", "--json").json()["ok"] is True
    assert in_a("gc", "--keep", "0", "--json").json()["deleted"] == []
    assert not any((h / d).exists() for h in (a, b) for d in ("artifacts", "backbones"))

    cat = open_catalog(Home(a), url=pg_url)
    try:
        with cat.session(write=False) as s:
            rows = s.scalars(select(Deployment)).all()  # one per (host, backbone)
            deps = {d.host: (d.task.name, d.version.number) for d in rows if d.task is not None}
            assert deps == {host_a: ("other", 1), "node-b": ("shapes", 1)}
            switched = s.scalars(select(Event).where(Event.kind == "switched")).all()
            assert sorted({e.host for e in switched}) == sorted({host_a, "node-b"})
    finally:
        cat.close()
    hosts = {e["host"] for e in in_b("history", "--json").json() if e["kind"] == "switched"}
    assert hosts == {host_a, "node-b"}
