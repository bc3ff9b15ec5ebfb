"""``mgr status`` checks the live files cheaply by default, without torch (issue 20).

Headers, sizes and times: where they are as the last switch left them, ``status`` answers from
them alone and imports neither torch nor timm; where they are not, it runs the bit-for-bit check
by itself; ``--verify-bits`` runs it always. The cheap check (`manager.switch.livecheck`) is the
switch's own: ``manager.switch.live`` imports it rather than keeping a copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from switch_helpers import copy_home, fork_server, live_file, template_home

from manager.catalog import open_catalog
from manager.catalog.deployment import host_deployments
from manager.home import Home
from manager.store.fs import Store
from manager.switch import livecheck

pytestmark = pytest.mark.slow  # the template home trains once per run

PROBE = """
import json, sys
from manager.cli import main

try:  # click returns the code of ctx.exit(N) when not standalone
    code = main.main(json.loads(sys.argv[1]), prog_name="mgr", standalone_mode=False) or 0
except SystemExit as exc:
    code = exc.code or 0
heavy = sorted(m for m in ("torch", "torchvision", "timm") if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.fixture
def home(tmp_path_factory, tmp_path) -> Path:
    h = copy_home(template_home(tmp_path_factory.getbasetemp()), tmp_path / "home")
    fork_server().run(h, "switch", "pets3@1")
    return h


def status(home: Path, *args: str) -> tuple[dict, list[str], int]:
    """``mgr status --json ARGS`` in a fresh process: the report, heavy modules it imported,
    and its exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGR_")}
    env["MGR_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(["status", "--json", *args])],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    probe = json.loads(proc.stderr.strip().splitlines()[-1])
    return json.loads(proc.stdout), probe["heavy"], probe["code"]


def _flip_byte_keep_time(path: Path) -> None:
    """One byte of the tensors changed, size and mtime restored: what the cheap check cannot
    see (a disk's silent corruption, a tool that keeps times)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        b = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_status_reads_no_tensor_until_asked_or_needed(home: Path) -> None:
    st, heavy, code = status(home)
    assert (st["task"], st["version"], st["verified"], code) == ("pets3", 1, True, 0)
    assert heavy == [], heavy  # headers, sizes and times only
    assert "--verify-bits" in st["verification"]
    full, heavy, _ = status(home, "--verify-bits")
    assert full["verified"] is True and "torch" in heavy and "bit for bit" in full["verification"]

    weights = live_file(home)
    _flip_byte_keep_time(weights)
    st, heavy, code = status(home)  # what the cheap check cannot see, it does not claim to
    assert st["verified"] is True and heavy == [] and "headers, sizes" in st["verification"]
    full, _, code = status(home, "--verify-bits")
    assert full["verified"] is False and code == 1
    assert "differ from W0 + delta" in full["problems"][0]

    os.utime(weights)  # now the time says it changed: the full check runs by itself
    st, heavy, code = status(home)
    assert st["verified"] is False and code == 1 and "torch" in heavy
    assert any("modified after the last switch" in p for p in st["problems"])
    assert any("differ from W0 + delta" in p for p in st["problems"])
    quick, heavy, code = status(home, "--no-verify")  # the cheap answer only
    assert quick["verified"] is False and heavy == [] and code == 1
    assert "modified after the last switch" in quick["problems"][0]


def test_the_cheap_check_reads_headers_sizes_and_times(home: Path) -> None:
    h = Home(home)
    store = Store.of(h)
    cat = open_catalog(h)
    try:
        with cat.session(write=False) as s:
            (dep,) = host_deployments(s, h.host)
            digest, vid = dep.backbone.content_hash, dep.version_id
            base = store.resolve(dep.backbone.path)
    finally:
        cat.close()
    weights, head = live_file(home), live_file(home, "head")

    assert livecheck.live_problem(store, base, vid, digest) is None
    assert "names another version" in livecheck.live_problem(store, base, None, digest)
    meta = livecheck.read_head_meta(store, digest)
    assert meta["format"] == livecheck.HEAD_FORMAT and livecheck.applied_version_id(meta) == vid
    assert livecheck.live_matches(weights, base) is True
    assert livecheck.live_matches(base, base) is False  # W0 itself is no live copy
    os.utime(weights)
    assert "modified after the last switch" in livecheck.live_problem(store, base, vid, digest)
    head.rename(head.with_suffix(".bak"))
    assert livecheck.applied_version_id(livecheck.read_head_meta(store, digest)) == "?"
    assert "head file is missing" in livecheck.live_problem(store, base, vid, digest)
