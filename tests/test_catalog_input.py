"""Input that reached a traceback or a bad message (issue 18): ``history --at`` past the calendar,
a catalog URL with a bad port, a URL naming a file that is no catalog, a forged catalog's JSON
nesting bomb, a one-class data set, backbone spec options that name files. Each is one line,
through the real CLI.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest
from conftest import assert_clean_error
from switch_helpers import fork_mgr, one_thread  # noqa: F401

from manager.errors import MgrError


@pytest.mark.parametrize(
    "when",
    ["999999999h", "10000000d", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00+14:00"],
)
def test_history_at_past_the_calendar_is_one_line(home: Path, when: str) -> None:
    proc = fork_mgr(home, "history", "--at", when, ok=False)
    assert_clean_error(proc)
    assert "out of range" in proc.stderr


def test_history_at_the_first_day_works(home: Path) -> None:
    """0001-01-01 (local time) raised from astimezone(); it is a valid, empty moment."""
    out = fork_mgr(home, "history", "--at", "0001-01-01", "--json", TZ="UTC").json()
    assert out["champions"] == []


def test_parse_when_never_raises_past_the_calendar() -> None:
    from manager.catalog.timeline import parse_when

    for when in ["999999999w", "999999999.999999d", "0001-01-01T00:00:00+23:59", "9999-12-31"]:
        with contextlib.suppress(MgrError):  # a time, or a refusal: nothing else
            parse_when(when)


def test_a_port_that_is_not_a_number_is_a_bad_url(home: Path) -> None:
    url = "postgresql://u:secret@127.0.0.1:abc/x"
    proc = fork_mgr(home, "task", "list", ok=False, MGR_DB_URL=url)
    assert_clean_error(proc)
    assert "bad catalog URL" in proc.stderr and "port is not a number" in proc.stderr
    assert "secret" not in proc.stderr


def test_a_file_that_is_no_catalog_is_never_advised_to_be_moved(home: Path, tmp_path: Path) -> None:
    for victim in [Path("/etc/passwd"), tmp_path / "notes.txt"]:
        if not victim.exists():
            victim.write_text("root:x:0:0::/root:/bin/sh\n")
        before = victim.read_bytes()
        proc = fork_mgr(home, "task", "list", ok=False, MGR_DB_URL=f"sqlite:///{victim}")
        assert_clean_error(proc)
        assert "not a SQLite database" in proc.stderr
        assert "mv " not in proc.stderr and ".damaged" not in proc.stderr
        assert victim.read_bytes() == before


@pytest.mark.parametrize(
    ("table", "column", "command"),
    [
        ("adapter_versions", "hyperparams", ("versions", "shapes", "--json")),
        ("events", "details", ("history",)),
    ],
)
@pytest.mark.trained_home
def test_a_json_nesting_bomb_is_a_damaged_row(home: Path, table, column, command) -> None:
    bomb = "[" * 100_000 + "]" * 100_000
    con = sqlite3.connect(home / "catalog.db")
    with con:
        con.execute(f"UPDATE {table} SET {column} = ?", (bomb,))
    con.close()
    proc = fork_mgr(home, *command, ok=False)
    assert_clean_error(proc)
    assert "damaged row" in proc.stderr and "RecursionError" not in proc.stderr


def test_json_nested_deep_but_decodable_is_a_damaged_row_too() -> None:
    """Deep enough to print or walk into a RecursionError later, shallow enough to decode."""
    from manager.catalog.db import MAX_JSON_DEPTH, json_loads

    assert json_loads('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    assert json_loads(ok) is not None
    with pytest.raises(MgrError, match="damaged row"):
        json_loads("[" * 500 + "]" * 500)


def test_a_one_class_image_folder_is_refused_at_task_add(home: Path, tmp_path: Path) -> None:
    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "data" / "train" / "cat" / "a.png").write_bytes(b"\x89PNG")
    proc = fork_mgr(home, "task", "add", "one", "--dataset", "imagefolder", "--root",
                    str(tmp_path / "data"), "--weights", "random", ok=False)  # fmt: skip
    assert_clean_error(proc)
    assert "has 1 class(es): a task needs at least 2" in proc.stderr
    assert fork_mgr(home, "task", "list", "--json").json() == []


@pytest.mark.parametrize(
    "option",
    [
        "checkpoint_path=/etc/shadow",
        "cache_dir=/tmp",
        "pretrained_cfg_overlay=x",
        "weights_url=http://example.com/w",
        "global_pool=/etc/shadow",
        "nosuch=1",
    ],
)
def test_backbone_spec_options_are_an_allow_list(home: Path, option: str) -> None:
    spec = f"vit_tiny_patch16_224:{option}"
    proc = fork_mgr(
        home, "task", "add", "t", "--dataset", "synthetic", "--backbone", spec, ok=False
    )
    assert_clean_error(proc)
    from manager.arch import parse_spec

    # A spec read back from a (forged) catalog row is checked the same way before timm sees it.
    with pytest.raises(MgrError):
        parse_spec(spec)


def test_backbone_spec_allowed_options_still_build() -> None:
    from manager.arch import parse_spec

    name, kwargs = parse_spec("deit_tiny_patch16_224:img_size=32,depth=2,global_pool=avg")
    assert name == "deit_tiny_patch16_224"
    assert kwargs == {"img_size": 32, "depth": 2, "global_pool": "avg"}
