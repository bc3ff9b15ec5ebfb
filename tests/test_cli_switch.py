"""``mgr switch / status / predict / verify / gc`` through the real CLI.

Most commands run in forked children of a warm interpreter (``switch_helpers.ForkServer``: the
real ``main()`` in a fresh process, without torch's import cost); the refusals that must print one
clean line run in a plain ``python -m manager`` subprocess.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import CLI, assert_clean_error
from safetensors.torch import load_file
from switch_helpers import catalog_versions, deployment, fork_mgr, live_file, merged, one_thread, w0  # noqa: F401

pytestmark = pytest.mark.trained_home  # `home`: a copy of the trained switch template


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def live_files(home: Path) -> tuple[dict, dict]:
    return load_file(live_file(home)), load_file(live_file(home, "head"))


def touched(home: Path, label: str) -> int:
    """Values a switch writes for this version's delta on the shared backbone (not its head)."""
    from manager.delta.delta import Delta
    from manager.switch.artifacts import split_head, touched_values

    body, _ = split_head(Delta.load(home / catalog_versions(home)[label]), w0(home))
    return touched_values(body)


def assert_live_is(home: Path, label: str | None) -> None:
    """The live files hold exactly a fresh merge of W0 and ``label``'s delta."""
    rel = catalog_versions(home)[label] if label else None
    want_body, want_head = merged(home, w0(home), rel)
    body, head = live_files(home)
    assert body.keys() == want_body.keys() and head.keys() == want_head.keys()
    for n, t in {**want_body, **want_head}.items():
        assert torch.equal({**body, **head}[n], t), n


def test_switch_writes_only_the_deltas_and_status_verifies(home):
    out = fork_mgr(home, "switch", "shapes", "--json").json()
    assert (out["task"], out["version"], out["changed"]) == ("shapes", 1, True)
    assert_live_is(home, "shapes@1")
    st = fork_mgr(home, "status", "--json").json()
    assert st["verified"] is True and st["problems"] == []
    assert (st["task"], st["version"], st["state"]) == ("shapes", 1, "idle")
    # Consolidator to consolidator: only the two supports (+ biases, norms) are written.
    out = fork_mgr(home, "switch", "pets3@1", "--json").json()
    assert out["previous_task"] == "shapes" and not out["full_restore"]
    assert out["values_written"] == touched(home, "shapes@1") + touched(home, "pets3@1")
    assert_live_is(home, "pets3@1")
    assert "already live" in fork_mgr(home, "switch", "pets3@1").stdout
    for label in ("digits@2", "pets3@3", "digits@1", "shapes@1"):
        fork_mgr(home, "switch", label)
        assert_live_is(home, label)
    # The backbone alone: the live file is byte for byte the materialised backbone file again.
    fork_mgr(home, "switch", "--none")
    (backbone,) = (home / "backbones").glob("*.safetensors")
    assert sha(live_file(home)) == sha(backbone)
    assert load_file(live_file(home, "head")) == {}
    text = fork_mgr(home, "status").stdout
    assert "the backbone alone" in text and "verified:  yes" in text
    # From W0, the default g=96 structure touches about 1/96 of each adapted weight.
    out = fork_mgr(home, "switch", "shapes", "--json").json()
    assert out["values_written"] == touched(home, "shapes@1") < out["values_total"] / 30
    assert_live_is(home, "shapes@1")
    events = [e for e in fork_mgr(home, "history", "--json").json() if e["kind"] == "switched"]
    assert [e["details"]["to"] for e in events] == [
        "shapes@1", "pets3@1", "digits@2", "pets3@3", "digits@1", "shapes@1", None, "shapes@1",
    ]  # fmt: skip


def test_bad_artifact_is_refused_and_the_live_files_stay(home):
    fork_mgr(home, "switch", "digits@1")
    before = sha(live_file(home)), sha(live_file(home, "head"))
    path = home / catalog_versions(home)["pets3@2"]
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01  # one bit in the tensor data
    path.write_bytes(bytes(data))
    proc = CLI(home)("switch", "pets3@2", ok=False)  # a plain `python -m manager` process
    assert_clean_error(proc)
    assert "artifact of pets3@2 is corrupt" in proc.stderr and "sha256" in proc.stderr
    path.unlink()
    res = fork_mgr(home, "switch", "pets3@2", ok=False)
    assert res.returncode == 1 and "artifact of pets3@2 is missing" in res.stderr
    assert (sha(live_file(home)), sha(live_file(home, "head"))) == before
    assert deployment(home) == {
        "state": "idle", "version_id": deployment(home)["version_id"], "pending_id": None,
        "live": "digits@1",
    }  # fmt: skip
    assert fork_mgr(home, "status", "--json").json()["verified"] is True


def test_predict_uses_the_live_files(home, tmp_path):
    from PIL import Image

    from manager.switch import Switcher

    gen = torch.Generator().manual_seed(0)
    images = []
    for i in range(3):
        arr = (torch.rand(40, 48, 3, generator=gen) * 255).to(torch.uint8).numpy()
        images.append(tmp_path / f"im{i}.png")
        Image.fromarray(arr).save(images[-1])
    out = fork_mgr(
        home, "predict", *map(str, images), "--task", "digits@1", "--top-k", "3", "--json"
    )
    res = out.json()
    assert (res["task"], res["version"]) == ("digits", 1)
    assert "switched to digits@1" in out.stderr
    assert deployment(home)["live"] == "digits@1"
    with Switcher(home) as sw:  # the in-memory switcher agrees with the live files
        sw.switch("digits", 1)
        probs = sw.predict([Image.open(p) for p in images])
    for r, p in zip(res["predictions"], probs, strict=True):
        assert [t["class"] for t in r["top"]] == [f"digits-c{i}" for i in p.topk(3).indices]
        assert r["top"][0]["probability"] == pytest.approx(float(p.max()), abs=1e-5)
    text = fork_mgr(home, "predict", str(images[0])).stdout  # no --task: whatever is live
    assert text.startswith("task digits@1") and "digits-c" in text
    fork_mgr(home, "switch", "--none")
    res = fork_mgr(home, "predict", str(images[0]), ok=False)
    assert res.returncode == 1 and "no task is live" in res.stderr


def test_verify_checks_every_file_and_the_byte_totals(home):
    fork_mgr(home, "switch", "shapes")
    rep = fork_mgr(home, "verify", "--json").json()
    assert rep["ok"] and rep["totals"]["catalog_bytes"] == rep["totals"]["disk_bytes"]
    assert {v["status"] for v in rep["versions"]} == {"ok"} and len(rep["versions"]) == 6
    assert rep["live"]["verified"] is True
    (home / catalog_versions(home)["digits@2"]).write_bytes(b"not a delta")
    (home / "artifacts/shapes/stray.safetensors").write_bytes(b"x" * 10)
    res = fork_mgr(home, "verify", ok=False)
    assert res.returncode == 1
    assert "CORRUPT   digits@2" in res.stdout and "UNTRACKED artifacts/shapes/stray" in res.stdout
    assert "!=" in res.stdout  # the catalog's bytes no longer equal the files'


def test_gc_keeps_newest_active_and_live(home):
    fork_mgr(home, "switch", "pets3@1")  # live, but not pets3's active version (v3)
    dead = _dead_pid()
    temp = home / f"artifacts/digits/.pending-{dead}-0badc0de.safetensors"  # a SIGKILLed trainer's
    temp.write_bytes(b"partial")
    assert "UNTRACKED artifacts/digits/.pending-" in fork_mgr(home, "verify", ok=False).stdout
    dry = fork_mgr(home, "gc", "--keep", "1", "--dry-run", "--json").json()
    assert sorted(f"{d['task']}@{d['version']}" for d in dry["deleted"]) == ["digits@1", "pets3@2"]
    assert len(catalog_versions(home)) == 6  # a dry run deletes nothing
    used = fork_mgr(home, "storage", "--json").json()["totals"]["adapter_bytes"]
    rep = fork_mgr(home, "gc", "--keep", "1", "--json").json()
    assert rep["deleted"] == dry["deleted"]
    kept = {f"{k['task']}@{k['version']}": k["reasons"] for k in rep["kept"]}
    assert kept["pets3@1"] == ["live"] and "active" in kept["pets3@3"]
    assert set(catalog_versions(home)) == {"shapes@1", "pets3@1", "pets3@3", "digits@2"}
    assert not (home / "artifacts/pets3/v2.safetensors").exists()
    assert not temp.exists() and rep["leftover_files"] == [temp.relative_to(home).as_posix()]
    after = fork_mgr(home, "storage", "--json").json()["totals"]["adapter_bytes"]
    assert used - after == rep["freed_bytes"] > 0
    kinds = [e["kind"] for e in fork_mgr(home, "history", "--json").json()]
    assert kinds.count("version_deleted") == 2 and kinds[-1] == "gc"
    assert fork_mgr(home, "verify", "--json").json()["ok"]
    assert fork_mgr(home, "gc", "--keep", "0", "--json").json()["deleted"] == []  # all in use now
    assert fork_mgr(home, "switch", "pets3@2", ok=False).returncode == 1  # deleted: refused


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_each_backbone_has_its_own_live_files(home):
    from switch_helpers import add_python_tasks

    from manager.backbone import build_backbone
    from manager.catalog import open_catalog, tasks
    from manager.home import Home
    from manager.registry.backbones import materialise_backbone

    h = Home.resolve(home)
    cat = open_catalog(h)
    spec = "deit_tiny_patch16_224:img_size=32,depth=2"
    other = build_backbone(spec, "random")
    with torch.no_grad():
        other.norm.weight.mul_(2.0)
    with cat.session() as s:
        row = materialise_backbone(s, h, other, spec, "other")
        tasks.add_task(s, name="carrier", dataset="synthetic", class_names=["a", "b"])
        tasks.get_task(s, "carrier").backbone_id = row.id
    cat.close()
    add_python_tasks(home, {"stranger": (2, [("bitfit", None, torch.float32)])}, "carrier")
    fork_mgr(home, "switch", "shapes")
    res = fork_mgr(home, "switch", "stranger")  # loads the other backbone; shapes stays live
    assert "loaded" in res.stdout
    st = fork_mgr(home, "status", "--json").json()
    assert st["verified"] is True and st["task"] is None  # two tasks live: no single one
    live = {b["backbone"]["content_hash"]: (b["task"], b["verified"]) for b in st["backbones"]}
    assert live[row.content_hash] == ("stranger", True) and len(live) == 2
    assert ("shapes", True) in live.values()
    fork_mgr(home, "switch", "--none", "--backbone", row.content_hash[:12])
    st = fork_mgr(home, "status", "--json").json()
    assert st["task"] == "shapes" and st["verified"] is True
