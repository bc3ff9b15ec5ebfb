"""`Store`, the one owner of the filesystem: confinement, atomic writes, temp-file ownership."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store, pid_alive, temp_owner


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(Home((tmp_path / "home").resolve()).ensure())


@pytest.fixture
def precious(tmp_path: Path) -> Path:
    victim = tmp_path / "victim"
    victim.mkdir()
    f = victim / "precious.txt"
    f.write_bytes(b"PRECIOUS")
    return f


def test_write_bytes_replaces_atomically(store: Store) -> None:
    target = store.root / "sub" / "file.bin"
    store.write_bytes(target, b"one")
    store.write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["file.bin"]  # no temp files left behind
    assert (target.stat().st_mode & 0o777) == 0o644


def test_atomic_failure_keeps_old_file(store: Store) -> None:
    target = store.root / "file.bin"
    store.write_bytes(target, b"old")
    with pytest.raises(RuntimeError), store.atomic(target) as tmp:
        assert tmp.parent == target.parent and temp_owner(tmp) == os.getpid()
        tmp.write_bytes(b"half-written")
        raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"old"
    assert os.listdir(store.root) == ["file.bin"]


@pytest.mark.parametrize(
    "rel", ["../victim/precious.txt", "/etc/passwd", "", "a/../../x", "a\x00b"]
)
def test_catalog_paths_must_stay_relative(store: Store, rel: str) -> None:
    with pytest.raises(MgrError, match="bad path"):
        store.resolve(rel)


def test_symlinked_folder_cannot_lead_writes_or_deletes_outside(
    store: Store, precious: Path
) -> None:
    store.mkdir(store.artifacts)
    (store.artifacts / "v").symlink_to(precious.parent, target_is_directory=True)
    with pytest.raises(MgrError, match="outside the manager home"):
        store.artifact("v", 1)
    for op in (
        lambda: store.write_bytes(store.artifacts / "v" / "precious.txt", b"x"),
        lambda: store.unlink(store.artifacts / "v" / "precious.txt"),
        lambda: store.rmtree(store.artifacts / "v" / "sub"),
        lambda: store.replace(store.root / "a", store.artifacts / "v" / "precious.txt"),
        lambda: store.open_update(store.artifacts / "v" / "precious.txt"),
        lambda: store.resolve("artifacts/v/precious.txt"),
    ):
        with pytest.raises(MgrError, match="outside the manager home"):
            op()
    assert precious.read_bytes() == b"PRECIOUS"


def test_links_are_removed_as_links(store: Store, precious: Path) -> None:
    link = store.root / "link.txt"
    link.symlink_to(precious)
    dir_link = store.root / "dirlink"
    dir_link.symlink_to(precious.parent, target_is_directory=True)
    assert store.unlink(link) and store.rmtree(dir_link)
    assert not link.is_symlink() and not dir_link.is_symlink()
    assert precious.read_bytes() == b"PRECIOUS"


def test_the_home_itself_may_be_reached_through_a_link(tmp_path: Path) -> None:
    real = tmp_path / "real-home"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    store = Store(Home(tmp_path / "alias"))
    store.write_bytes(store.artifact("t", 1), b"ok")
    assert (real / "artifacts" / "t" / "v1.safetensors").read_bytes() == b"ok"
    assert store.rel(store.artifact("t", 1)) == "artifacts/t/v1.safetensors"
    assert store.resolve("artifacts/t/v1.safetensors") == real / "artifacts/t/v1.safetensors"


def test_artifact_root_is_a_second_allowed_root(tmp_path: Path) -> None:
    shared = (tmp_path / "shared-artifacts").resolve()
    shared.mkdir()
    store = Store(Home((tmp_path / "h").resolve()).ensure(), artifact_root=shared)
    store.write_bytes(shared / "x.bin", b"1")
    with pytest.raises(MgrError):
        store.write_bytes(tmp_path / "elsewhere.bin", b"1")


def test_refuses_to_delete_the_home_or_a_folder_as_a_file(store: Store) -> None:
    with pytest.raises(MgrError, match="the manager home"):
        store.rmtree(store.root)
    store.mkdir(store.root / "d")
    with pytest.raises(MgrError, match="folder"):
        store.unlink(store.root / "d")


def test_temp_owner_names() -> None:
    assert temp_owner(Path(".v1.safetensors.tmp-123-ab12")) == 123
    assert temp_owner(Path(".pending-77-0f0f.safetensors")) == 77
    assert temp_owner(Path("v1.safetensors")) is None
    assert temp_owner(Path(".pending-x.safetensors")) is None
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 12345)  # above Linux's pid_max
