"""Several backbones in one server (issue 17, the server's side), through the real server in a
subprocess over a home with tasks on two backbones (the tiny spec: ``shapes``, ``pets3``,
``digits``; depth 1: ``small``): every task answers as ``mgr predict`` does, ``/v1/tasks`` says
per task its backbone, whether it is loaded and servable and why not, ``--max-memory`` evicts and
reloads backbones with the answers unchanged, and a backbone that cannot fit is a 503."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from serve_helpers import ALL_CLASSES, Server, assert_same_answer, b64, metric, one_line_error, png
from switch_helpers import copy_home, fork_server, sql, template_home, with_second_backbone

SPEC1 = "deit_tiny_patch16_224:img_size=32,depth=1"
SMALL = {"small": (4, [("consolidator", ((4, True),), torch.float32)])}
IMAGES = [png(40 + i, size) for i, size in enumerate([(40, 32), (64, 48), (17, 90)])]


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """The switch template plus ``small`` on a second backbone (depth 1)."""
    home = copy_home(
        template_home(tmp_path_factory.getbasetemp()), tmp_path_factory.mktemp("sbb") / "home"
    )
    with_second_backbone(home, SPEC1, SMALL)
    folder = home.parent / "images"
    folder.mkdir()
    for i, data in enumerate(IMAGES):
        (folder / f"im{i}.png").write_bytes(data)
    return home


_EXPECTED: dict[str, dict] = {}


def expected(home: Path, label: str) -> dict[str, list[dict]]:
    """``{image name: top list}`` from ``mgr predict --task LABEL --json``."""
    if label not in _EXPECTED:
        paths = sorted(str(p) for p in (home.parent / "images").iterdir())
        args = ("predict", "--task", label, "--json", "--top-k", str(ALL_CLASSES), *paths)
        out = fork_server().run(home, *args).json()
        assert f"{out['task']}@{out['version']}" == label
        _EXPECTED[label] = {Path(p["image"]).name: p["top"] for p in out["predictions"]}
    return _EXPECTED[label]


def ask(srv: Server, task: str) -> dict:
    images = [{"name": f"im{i}.png", "data": b64(d)} for i, d in enumerate(IMAGES)]
    doc = {"task": task, "images": images, "top_k": ALL_CLASSES}
    status, out = srv.post(json.dumps(doc).encode())
    assert status == 200, out
    return out


def assert_equal(home: Path, out: dict) -> None:
    want = expected(home, out["answered"])
    for pred in out["predictions"]:
        assert_same_answer(pred["top"], want[pred["image"]])


def test_every_task_on_either_backbone_answers_as_mgr_predict(home: Path) -> None:
    srv = Server(home)
    try:
        assert "ready: serving 4 of 5 task(s)" in srv.output()  # carrier has no version
        jobs = ["shapes", "small", "pets3", "small", "digits", "shapes"] * 2
        with ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(lambda t: ask(srv, t), jobs))
        for task, out in zip(jobs, outs, strict=True):
            assert out["task"] == task
            assert_equal(home, out)
        listing = srv.get("/v1/tasks")[1]
        rows = {r["task"]: r for r in listing["tasks"]}
        assert rows["small"]["backbone"] == SPEC1 and rows["shapes"]["backbone"] != SPEC1
        assert rows["small"]["loaded"] and rows["small"]["servable"]
        assert rows["small"]["why_not"] is None
        assert not rows["carrier"]["servable"] and "no active version" in rows["carrier"]["why_not"]
        health = srv.get("/healthz")[1]
        assert len(health["backbones"]) == 2 and all(b["bytes"] > 0 for b in health["backbones"])
        for b in health["backbones"]:
            assert metric(srv, f'mgr_backbone_resident_bytes{{backbone="{b["backbone"]}"}}') > 0
        # Two backbones live in the home's files now: a request naming no task is ambiguous.
        expected(home, "small@1")
        status, out = srv.post_json({"images": [b64(IMAGES[0])]})
        assert "pass a task" in one_line_error(status, out, 400)
    finally:
        assert srv.stop() == 0


def test_max_memory_evicts_and_reloads_backbones_with_the_same_answers(home: Path) -> None:
    # A loaded backbone holds W0 and its serving copy (fp32 here: twice its file) plus deltas.
    sizes = sorted(n for (n,) in sql(home, "SELECT bytes FROM backbones"))
    small, big = sizes
    budget = 2 * big + small  # either backbone and its few small deltas fit, both do not
    srv = Server(home, "--max-memory", str(budget))
    try:
        for task in ("shapes", "small", "pets3", "small", "shapes"):
            out = ask(srv, task)
            assert_equal(home, out)
            health = srv.get("/healthz")[1]
            assert len(health["backbones"]) == 1, health
            assert sum(b["bytes"] for b in health["backbones"]) <= budget
        assert metric(srv, "mgr_backbone_evictions_total") >= 3
    finally:
        assert srv.stop() == 0


def test_a_backbone_that_cannot_fit_is_a_503(home: Path) -> None:
    srv = Server(home, "--max-memory", "1KB")
    try:
        status, out = srv.post_json({"task": "small", "images": [b64(IMAGES[0])]})
        assert "cannot fit" in one_line_error(status, out, 503)
        assert srv.get("/livez")[0] == 200
    finally:
        assert srv.stop() == 0
