"""Output paths the user names (``export --out``, ``storage --plot``) and input files
(``--weights``): a name too long, a parent that is a file, weights that are not a regular file
(issue 18). Each is one line and writes nothing, through the real CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import assert_clean_error
from switch_helpers import copy_home, fork_server, one_thread, template_home  # noqa: F401


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A home with trained tasks (shapes@1), shared by the refusals below: they write nothing."""
    base = tmp_path_factory.getbasetemp()
    return copy_home(template_home(base), tmp_path_factory.mktemp("paths") / "home")


LONG = "a" * 300


def mgr_in(home: Path, *args: str):
    """`mgr ARGS` in a forked child of a warm interpreter (refusals only: nothing trains)."""
    return fork_server().run(home, *args, ok=False)


@pytest.mark.parametrize(
    "args",
    [
        ("export", "shapes@1", "--out", "{t}/x/" + LONG),
        ("storage", "--plot", "{t}/x/" + LONG + ".png"),
    ],
    ids=["export", "plot"],
)
def test_a_300_character_name_is_one_line(trained: Path, tmp_path: Path, args) -> None:
    proc = mgr_in(trained, *(a.format(t=tmp_path) for a in args))
    assert_clean_error(proc)
    assert "the name is 300 bytes" in proc.stderr or "the name is 304 bytes" in proc.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "args",
    [("export", "shapes@1", "--out", "{t}/afile/sub"), ("storage", "--plot", "{t}/afile/sub.png")],
    ids=["export", "plot"],
)
def test_a_parent_that_is_a_file_is_named(trained: Path, tmp_path: Path, args) -> None:
    (tmp_path / "afile").write_text("keep")
    proc = mgr_in(trained, *(a.format(t=tmp_path) for a in args))
    assert_clean_error(proc)
    assert f"its parent {tmp_path / 'afile'} is a file, not a folder" in proc.stderr
    assert (tmp_path / "afile").read_text() == "keep"


def test_weights_that_are_not_a_regular_file(home: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "w.fifo"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.safetensors"
    zero.symlink_to("/dev/zero")
    folder = tmp_path / "w.d"
    folder.mkdir()
    for path, kind in [(fifo, "a FIFO"), (zero, "a character device"), (folder, "a folder")]:
        proc = mgr_in(home, "task", "add", "t", "--dataset", "synthetic", "--weights", str(path))
        assert_clean_error(proc)
        assert f"is {kind}" in proc.stderr and "not a regular file" in proc.stderr
    assert fork_server().run(home, "task", "list", "--json").json() == []


def test_weights_not_a_regular_file_when_loaded(tmp_path: Path) -> None:
    """The same check where a recorded task's weights are read (the file changed since)."""
    from manager.backbone import read_state_file
    from manager.errors import MgrError

    fifo = tmp_path / "w.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(MgrError, match="FIFO"):  # and does not block reading the pipe
        read_state_file(fifo)
