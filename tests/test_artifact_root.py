"""``MGR_ARTIFACT_ROOT`` that is not a folder (issue 18): ``verify`` listed every artifact as
MISSING; every command now says the root itself is wrong, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import assert_clean_error
from switch_helpers import fork_server, one_thread  # noqa: F401

from manager.errors import MgrError
from manager.home import Home
from manager.store.fs import Store


@pytest.mark.parametrize("command", [("verify",), ("task", "list"), ("gc", "--dry-run")])
def test_an_artifact_root_that_is_a_file_is_named(home: Path, tmp_path: Path, command) -> None:
    afile = tmp_path / "root-file"
    afile.write_text("not a folder")
    proc = fork_server().run(home, *command, ok=False, MGR_ARTIFACT_ROOT=str(afile))
    assert_clean_error(proc)
    assert f"MGR_ARTIFACT_ROOT={afile} is a file, not a folder" in proc.stderr
    assert "MISSING" not in proc.stdout + proc.stderr
    assert afile.read_text() == "not a folder"


def test_store_of_checks_the_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = Home(tmp_path / "h")
    monkeypatch.setenv("MGR_ARTIFACT_ROOT", "/dev/null")
    with pytest.raises(MgrError, match="a character device, not a folder"):
        Store.of(home)
    monkeypatch.setenv("MGR_ARTIFACT_ROOT", str(tmp_path / "not-yet"))  # made on first write
    assert Store.of(home).data_root == tmp_path / "not-yet"
    monkeypatch.setenv("MGR_ARTIFACT_ROOT", str(tmp_path))
    assert Store.of(home).data_root == tmp_path
