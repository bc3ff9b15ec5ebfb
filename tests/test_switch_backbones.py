"""Several backbones in one home: live files per backbone, and never an answer from the wrong task.

The home: the switch template (``shapes`` trained through the CLI, ``pets3`` and ``digits`` made
in Python, all on the tiny spec) plus a second backbone of another depth (``deit_tiny ...
depth=1``) carrying ``small``. Everything runs through the real CLI (forked children of one warm
interpreter, see ``switch_helpers``); the expected weights are fresh merges computed here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import CLI, TINY_SPEC, assert_clean_error
from safetensors.torch import load_file
from switch_helpers import (
    add_python_tasks,
    catalog_versions,
    copy_home,
    fork_mgr,
    fork_server,
    live_file,
    merged,
    sql,
    template_home,
    with_second_backbone,
)

SPEC1 = "deit_tiny_patch16_224:img_size=32,depth=1"
SMALL = {
    "small": (4, [("consolidator", ((4, True),), torch.float32), ("bitfit", None, torch.float32)])
}


def _backbones(home: Path) -> dict[str, tuple[str, str]]:
    """``{task: (backbone spec, content hash)}`` read with sqlite3."""
    rows = sql(
        home,
        "SELECT t.name, b.spec, b.content_hash, b.path FROM tasks t JOIN backbones b "
        "ON b.id = t.backbone_id",
    )
    return {t: (spec, digest, path) for t, spec, digest, path in rows}


@pytest.fixture(scope="module")
def two_backbone_home(tmp_path_factory) -> Path:
    """The template plus ``small`` on a second backbone (depth 1), built once per module."""
    base = tmp_path_factory.getbasetemp()
    home = copy_home(template_home(base), tmp_path_factory.mktemp("bb") / "home")
    with_second_backbone(home, SPEC1, SMALL)
    return home


@pytest.fixture
def home(two_backbone_home, tmp_path) -> Path:
    return copy_home(two_backbone_home, tmp_path / "home")


def expected(home: Path, label: str) -> tuple[str, dict, dict]:
    """(backbone hash, body, head) of a fresh merge of ``label``'s delta on its own backbone."""
    task = label.split("@")[0]
    _, digest, rel = _backbones(home)[task]
    base = load_file(str(home / rel))
    body, head = merged(home, base, catalog_versions(home)[label])
    return digest, body, head


def assert_live_is(home: Path, label: str) -> None:
    digest, body, head = expected(home, label)
    live = load_file(str(live_file(home, "backbone", digest)))
    live_head = load_file(str(live_file(home, "head", digest)))
    assert live.keys() == body.keys() and live_head.keys() == head.keys()
    for n, t in body.items():
        assert torch.equal(live[n], t), (label, n)
    for n, t in head.items():
        assert torch.equal(live_head[n], t.to(live_head[n].dtype)), (label, n)


def test_switch_across_backbones_in_every_order(home):
    """Every ordered pair of three tasks on two backbones (A B C A C B A covers the six);
    after each switch the target's live files are a fresh merge and the other backbone's are
    untouched; status lists both, verified."""
    order = ["shapes@1", "small@2", "digits@2", "shapes@1", "digits@2", "small@2", "shapes@1"]
    held: dict[str, str] = {}  # backbone hash -> label live there
    for label in order:
        res = fork_mgr(home, "switch", label, "--json").json()
        digest = _backbones(home)[label.split("@")[0]][1]
        assert res["backbone_hash"] == digest
        held[digest] = label
        for lab in held.values():  # the target, and what the other backbone still holds
            assert_live_is(home, lab)
    st = fork_mgr(home, "status", "--json").json()
    assert st["verified"] is True and st["task"] is None
    got = {b["backbone"]["content_hash"]: f"{b['task']}@{b['version']}" for b in st["backbones"]}
    assert got == held and len(got) == 2
    assert all(b["verified"] is True for b in st["backbones"])
    text = fork_mgr(home, "status").stdout
    assert text.count("verified:  yes") == 2 and SPEC1 in text and TINY_SPEC in text
    # --repair, verify and --none cover every live backbone.
    reps = fork_mgr(home, "switch", "--repair", "--json").json()
    assert {f"{r['task']}@{r['version']}" for r in reps} == set(held.values())
    for lab in held.values():
        assert_live_is(home, lab)
    assert fork_mgr(home, "verify", "--json").json()["ok"] is True
    reps = fork_mgr(home, "switch", "--none", "--json").json()
    assert len(reps) == 2 and all(r["task"] is None for r in reps)
    st = fork_mgr(home, "status", "--json").json()
    assert st["verified"] is True and [b["task"] for b in st["backbones"]] == [None, None]


def _image(tmp_path: Path) -> Path:
    from PIL import Image

    g = torch.Generator().manual_seed(3)
    arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
    path = tmp_path / "im.png"
    Image.fromarray(arr).save(path)
    return path


def _reference_probs(home: Path, label: str, image: Path) -> torch.Tensor:
    """The class probabilities of a model built here from the fresh merge (not the live files)."""
    from PIL import Image

    from manager.backbone import build_backbone
    from manager.datasets.transforms import data_config, eval_transform

    task = label.split("@")[0]
    spec = _backbones(home)[task][0]
    _, body, head = expected(home, label)
    n = next(t.shape[0] for k, t in head.items() if k.endswith("weight"))
    model = build_backbone(spec, "random", num_classes=n).eval()
    model.load_state_dict({**body, **{k: t.float() for k, t in head.items()}})
    dc = data_config(model)
    x = eval_transform(dc["img_size"], dc["mean"], dc["std"])(Image.open(image).convert("RGB"))
    with torch.no_grad():
        return model(x[None]).softmax(-1)[0]


def test_predict_answers_the_task_asked_and_refuses_ambiguity(home, tmp_path):
    image = _image(tmp_path)
    for label in ("shapes@1", "digits@2", "small@2"):  # champions, on two backbones
        task = label.split("@")[0]
        out = fork_mgr(home, "predict", str(image), "--task", task, "--top-k", "1", "--json").json()
        assert f"{out['task']}@{out['version']}" == label
        (top,) = out["predictions"][0]["top"]
        want = _reference_probs(home, label, image)
        assert top["index"] == int(want.argmax())
        # fp32 forward passes of the same weights; only summation order may differ
        assert abs(top["probability"] - float(want.max())) < 1e-5
    # Two backbones each with a task live, no --task: one line naming them, exit 1.
    proc = CLI(home)("predict", str(image), ok=False)
    assert_clean_error(proc)
    assert "small@2" in proc.stderr and "--task" in proc.stderr
    assert ("shapes@1" in proc.stderr) != ("digits@2" in proc.stderr)  # the one live there
    # One backbone alone again: the one task live answers.
    small_hash = _backbones(home)["small"][1]
    fork_mgr(home, "switch", "--none", "--backbone", small_hash[:12])
    out = fork_mgr(home, "predict", str(image), "--json").json()
    assert out["task"] == "digits"


def test_task_means_the_champion_after_a_rollback(home, tmp_path):
    """The trap of issue 17: promote v1, switch to the champion, roll back: the champion is v3
    again while v1 is live. status says so; predict --task answers with the champion."""
    image = _image(tmp_path)
    fork_mgr(home, "promote", "pets3@1")
    fork_mgr(home, "switch", "pets3@champion")
    fork_mgr(home, "rollback", "pets3")
    st = fork_mgr(home, "status", "--json").json()
    (row,) = [b for b in st["backbones"] if b["task"] == "pets3"]
    assert (row["version"], row["champion"], row["verified"]) == (1, 3, True)
    assert "champion is v3" in row["notes"][0]
    assert "champion is v3" in fork_mgr(home, "status").stdout
    out = fork_mgr(home, "predict", str(image), "--task", "pets3", "--json").json()
    assert (out["task"], out["version"]) == ("pets3", 3)
    assert_live_is(home, "pets3@3")
    out = fork_mgr(home, "predict", str(image), "--task", "pets3@1", "--json").json()
    assert (out["task"], out["version"]) == ("pets3", 1)  # an explicit version is honoured


def test_task_add_checks_the_weight_file_header(tmp_path):
    import timm
    from safetensors.torch import save_file

    home = tmp_path / "home"
    weights = tmp_path / "deit_tiny.safetensors"
    model = timm.create_model("deit_tiny_patch16_224", num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    # The default backbone is ViT-B (768 wide): refused in one line naming what fits.
    proc = fork_mgr(home, "task", "add", "bad3", "--dataset", "synthetic",
                    "--weights", str(weights), ok=False)  # fmt: skip
    assert_clean_error(proc)
    assert "cls_token" in proc.stderr and "deit_tiny_patch16_224" in proc.stderr
    assert fork_mgr(home, "task", "list", "--json").json() == []
    # The same file with a spec it fits is accepted (another image size included).
    fork_mgr(home, "task", "add", "good", "--dataset", "synthetic", "--weights", str(weights),
        "--backbone", "deit_tiny_patch16_224", "--img-size", "48")  # fmt: skip
    shown = fork_mgr(home, "task", "show", "good", "--json").json()
    assert shown["backbone_spec"] == "deit_tiny_patch16_224:img_size=48"


def test_train_img_size_other_than_the_tasks_is_refused(tmp_path):
    home = tmp_path / "home"
    spec = "deit_tiny_patch16_224:depth=1"
    fork_mgr(home, "task", "add", "t", "--dataset", "synthetic:per_class=2", "--backbone", spec,
        "--weights", "random", "--img-size", "32")  # fmt: skip
    proc = fork_mgr(home, "train", "t", "--epochs", "1", "--img-size", "48", ok=False)
    assert_clean_error(proc)
    assert "takes 32 px" in proc.stderr and "--img-size 48" in proc.stderr
    assert "mgr task add" in proc.stderr
    shown = fork_mgr(home, "task", "show", "t", "--json").json()
    assert shown["bound_backbone"] is None and shown["versions"] == []  # nothing bound
    assert not (home / "backbones").exists() or not any((home / "backbones").iterdir())
    # --img-size is refused when it contradicts the spec's own.
    proc = fork_mgr(home, "task", "add", "u", "--dataset", "synthetic", "--backbone", TINY_SPEC,
               "--weights", "random", "--img-size", "48", ok=False)  # fmt: skip
    assert_clean_error(proc)
    assert "contradicts" in proc.stderr


def test_an_old_single_live_home_migrates(tmp_path_factory, tmp_path):
    """A home from before live folders per backbone (catalog at 0004, live/backbone.safetensors):
    the first command upgrades the catalog and moves the files; what was live stays live."""
    from manager.catalog.db import make_engine
    from manager.catalog.migrate import downgrade, head_revision

    home = copy_home(template_home(tmp_path_factory.getbasetemp()), tmp_path / "home")
    fork_mgr(home, "switch", "digits@1")
    (folder,) = [p for p in (home / "live").iterdir() if p.is_dir()]
    for name in ("backbone.safetensors", "head.safetensors"):
        shutil.move(folder / name, home / "live" / name)
    folder.rmdir()
    engine = make_engine(f"sqlite:///{home / 'catalog.db'}")
    try:
        downgrade(engine, "0004")
    finally:
        engine.dispose()
    st = fork_mgr(home, "status", "--json").json()
    assert (st["task"], st["version"], st["verified"]) == ("digits", 1, True)
    assert not (home / "live" / "backbone.safetensors").exists()
    assert not (home / "live" / "head.safetensors").exists()
    assert live_file(home).parent.name == folder.name
    assert fork_mgr(home, "db", "current").stdout.strip() == f"{head_revision()} (head)"
    fork_mgr(home, "switch", "shapes")  # and the migrated state switches on in O(delta)
    st = fork_mgr(home, "status", "--json").json()
    assert (st["task"], st["verified"]) == ("shapes", True)
    assert fork_mgr(home, "verify", "--json").json()["ok"] is True


SPEC2 = "deit_tiny_patch16_224:img_size=48,depth=1"
WIDE = {
    "wide": (3, [("consolidator", ((8, False),), torch.float32), ("lora", None, torch.float32)])
}
KILLS = 16
SLOW = "0.003"  # seconds per tensor written by a switch: widens its write phase


def _live_rows(home: Path) -> dict[str, str | None]:
    """``{backbone hash: "task@N" or None}`` of every deployment row, read with sqlite3."""
    rows = sql(
        home,
        "SELECT b.content_hash, t.name, v.number FROM deployment d "
        "JOIN backbones b ON b.id = d.backbone_id "
        "LEFT JOIN adapter_versions v ON v.id = d.version_id "
        "LEFT JOIN tasks t ON t.id = v.task_id",
    )
    return {h: (f"{t}@{n}" if t else None) for h, t, n in rows}


@pytest.mark.slow
def test_kills_during_cross_backbone_switches_leave_every_backbone_consistent(
    two_backbone_home, tmp_path
):
    """SIGKILLs at random moments of switches between tasks on three backbones: after each,
    the next command (status) finds every backbone idle and verified, and each backbone's live
    file is bit-for-bit the merge of the version its row names."""
    import os
    import random
    import signal
    import time

    from manager.backbone import build_backbone
    from manager.catalog import open_catalog, tasks
    from manager.home import Home
    from manager.registry.backbones import materialise_backbone

    home = copy_home(two_backbone_home, tmp_path / "home")
    h = Home.resolve(home)
    cat = open_catalog(h)
    try:
        with cat.session() as s:
            row = materialise_backbone(s, h, build_backbone(SPEC2, "random"), SPEC2, "random")
            tasks.add_task(
                s, name="carrier2", dataset="synthetic", class_names=["a"], backbone_spec=SPEC2
            )
            tasks.get_task(s, "carrier2").backbone_id = row.id
    finally:
        cat.close()
    add_python_tasks(home, WIDE, "carrier2", spec=SPEC2)
    srv = fork_server()
    labels = [*catalog_versions(home)]
    assert len({_backbones(home)[lab.split("@")[0]][1] for lab in labels}) == 3
    srv.run(home, "switch", "shapes@1")
    srv.run(home, "switch", "small@1")  # all three backbones live from here on
    window = srv.run(home, "switch", "wide@1", MGR_SWITCH_TEST_SLOWDOWN=SLOW).seconds
    rng = random.Random(17)
    killed = attempts = 0
    while killed < KILLS:
        attempts += 1
        assert attempts < 5 * KILLS
        target = rng.choice([*labels, None])
        args = ("switch", target) if target else ("switch", "--none")
        started = srv.start(home, *args, MGR_SWITCH_TEST_SLOWDOWN=SLOW)
        time.sleep(rng.uniform(0.0, window))
        os.kill(started[0], signal.SIGKILL)
        res = srv.wait(started)
        killed += res.returncode == -signal.SIGKILL
        st = srv.run(home, "status", "--json").json()  # finishes or rolls back the switch
        assert st["state"] == "idle" and st["verified"] is True, st
        for digest, label in _live_rows(home).items():
            if label is not None:
                assert_live_is(home, label)
            else:  # the backbone alone: the live file is W0
                base = load_file(str(home / next(v[2] for v in _backbones(home).values()
                                                 if v[1] == digest)))  # fmt: skip
                live = load_file(str(live_file(home, "backbone", digest)))
                assert all(torch.equal(live[n], t) for n, t in base.items())
    assert len(_live_rows(home)) == 3
    assert srv.run(home, "verify", "--json").json()["ok"] is True
