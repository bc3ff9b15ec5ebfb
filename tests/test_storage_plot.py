"""``mgr storage --plot``: a real PNG of the requested size whose embedded data is the report's.

The PNG is read here byte by byte (signature, IHDR, text chunks), without matplotlib or PIL, so
the checks do not trust the library that wrote it.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from conftest import CLI, TINY_SPEC, assert_clean_error
from switch_helpers import fork_mgr, one_thread  # noqa: F401

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == SIGNATURE
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", png_chunks(data)[0][1][:8])


def png_text(data: bytes) -> dict[str, str]:
    """tEXt, zTXt and iTXt chunks (matplotlib picks one by length and characters)."""
    out = {}
    for kind, body in png_chunks(data):
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _lang, _, rest = rest.partition(b"\0")
            _tkey, _, text = rest.partition(b"\0")
            out[key.decode("latin-1")] = (zlib.decompress(text) if compressed else text).decode()
    return out


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory) -> Path:
    """Two tasks, two trained versions each (consolidator and linear probe), budgets set."""
    home = tmp_path_factory.mktemp("plot") / "home"
    home.mkdir()
    for task, data in (("shapes", "synthetic:per_class=4"), ("dots", "synthetic:num_classes=3")):
        fork_mgr(home, "task", "add", task, "--dataset", data, "--backbone", TINY_SPEC,
            "--weights", "random")  # fmt: skip
        for method in ("consolidator", "linear"):
            fork_mgr(home, "train", task, "--method", method, "--epochs", "1", "--batch-size", "48")
    fork_mgr(home, "budget", "set", "100KB", "--task", "shapes")
    fork_mgr(home, "budget", "set", "1MiB")
    return home


def test_the_plot_is_a_png_of_the_report(two_by_two, tmp_path):
    out = tmp_path / "out.png"
    fork_mgr(two_by_two, "storage", "--plot", str(out))
    data = out.read_bytes()
    assert png_size(data) == (1200, 800)
    drawn = json.loads(png_text(data)["mgr-storage"])
    report = fork_mgr(two_by_two, "storage", "--json").json()
    assert drawn["global_budget_bytes"] == report["totals"]["global_budget_bytes"] == 2**20
    assert [t["task"] for t in drawn["tasks"]] == [t["task"] for t in report["tasks"]]
    for d, r in zip(drawn["tasks"], report["tasks"], strict=True):
        assert d["budget_bytes"] == r["budget_bytes"]
        assert d["used_bytes"] == r["used_bytes"] == sum(v["bytes"] for v in r["versions"])
        assert d["full_finetune_bytes"] == r["full_finetune_bytes"] > 0
        assert [(v["number"], v["method"], v["bytes"], v["top1"]) for v in d["versions"]] == [
            (v["number"], v["method"], v["bytes"], v["top1"]) for v in r["versions"]
        ]
        assert len(d["versions"]) == 2
        assert all(isinstance(v["top1"], float) for v in d["versions"])
    budgets = {t["task"]: t["budget_bytes"] for t in drawn["tasks"]}
    assert budgets == {"shapes": 100_000, "dots": None}


@pytest.mark.parametrize("size", ["640x480", "1001x333", "333x1001"])
def test_the_requested_size_in_pixels(two_by_two, tmp_path, size):
    out = tmp_path / "sized.png"
    proc = fork_mgr(two_by_two, "storage", "--json", "--plot", str(out), "--plot-size", size)
    json.loads(proc.stdout)  # --json stays clean; the path goes to stderr
    assert str(out) in proc.stderr
    w, h = map(int, size.split("x"))
    assert png_size(out.read_bytes()) == (w, h)


def test_a_catalog_without_versions_still_gets_a_picture(home, tmp_path):
    fork_mgr(home, "task", "add", "empty", "--dataset", "synthetic", "--backbone", TINY_SPEC,
        "--weights", "random")  # fmt: skip
    out = tmp_path / "empty.png"
    fork_mgr(home, "storage", "--plot", str(out))
    data = out.read_bytes()
    assert png_size(data) == (1200, 800)
    drawn = json.loads(png_text(data)["mgr-storage"])
    assert [(t["task"], t["versions"]) for t in drawn["tasks"]] == [("empty", [])]


@pytest.mark.parametrize("size", ["12x800", "800", "axb", "100000x800"])
def test_bad_sizes_and_paths_are_one_line(home, tmp_path, size):
    out = tmp_path / "x.png"
    assert_clean_error(fork_mgr(home, "storage", "--plot", str(out), "--plot-size", size, ok=False))
    assert not out.exists()


def test_a_plot_never_lands_inside_the_home_or_over_a_folder(home, tmp_path):
    proc = fork_mgr(home, "storage", "--plot", str(home / "catalog.db"), ok=False)
    assert_clean_error(proc)
    assert "inside the manager home" in proc.stderr
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert_clean_error(fork_mgr(home, "storage", "--plot", str(folder), ok=False))
    assert folder.is_dir()


def test_a_plot_path_resolves_exactly_as_given(home, tmp_path):
    """A relative --plot is taken from the working folder, an absolute one as is; the
    path printed is the file written, and nothing else appears beside it."""
    cli = CLI(home)
    assert cli.cwd == tmp_path  # the real CLI in a subprocess, working in this test's folder
    work = tmp_path / "work"
    work.mkdir()
    before = set(tmp_path.iterdir())
    proc = cli("storage", "--plot", "rel/x.png", cwd=work)
    assert proc.stdout.splitlines()[0] == f"storage plot: {work / 'rel' / 'x.png'}"
    assert png_size((work / "rel" / "x.png").read_bytes()) == (1200, 800)
    absolute = tmp_path / "abs" / "y.png"
    proc = cli("storage", "--plot", str(absolute), cwd=work)
    assert proc.stdout.splitlines()[0] == f"storage plot: {absolute}"
    assert set(tmp_path.iterdir()) == before | {tmp_path / "abs"}
    assert sorted(p.name for p in work.rglob("*")) == ["rel", "x.png"]
