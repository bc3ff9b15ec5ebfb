"""Pretrained weights with no network: one clear line at once, never a minute of retries.

Each case runs in a fresh interpreter, since huggingface_hub reads HF_HUB_OFFLINE and HF_ENDPOINT
when it is imported. ``http://127.0.0.1:9`` is a closed local port: a network that refuses.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY_SPEC, assert_clean_error

DEAD_ENDPOINT = "http://127.0.0.1:9"

# Times build_backbone alone (the interpreter's torch import is not the hub's doing).
SCRIPT = """
import json, sys, time
from manager.backbone import build_backbone
from manager.errors import MgrError
t = time.perf_counter()
try:
    m = build_backbone(sys.argv[1], None)
    out = {"ok": True, "w": m.blocks[0].attn.qkv.weight.flatten()[:4].tolist()}
except MgrError as e:
    out = {"ok": False, "error": str(e), "hint": e.hint}
out["seconds"] = time.perf_counter() - t
print(json.dumps(out))
"""


def hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "MGR_"))}
    # An empty cache of our own: nothing on this machine may serve the weights.
    env.update(HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"), **extra)
    return env


def build(spec: str, env: dict[str, str]) -> tuple[dict, str]:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, spec],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.mark.parametrize(
    "extra",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": DEAD_ENDPOINT}],
    ids=["HF_HUB_OFFLINE", "closed-port"],
)
def test_no_network_fails_fast_with_one_line(tmp_path: Path, extra: dict[str, str]) -> None:
    out, stderr = build(TINY_SPEC, hub_env(tmp_path, **extra))
    assert not out["ok"] and "\n" not in out["error"]
    assert "--weights" not in out["error"]  # the library's message speaks of weights...
    assert "--weights PATH" in out["hint"] and "--weights random" in out["hint"]  # ...the CLI's
    if "HF_HUB_OFFLINE" in extra:
        assert "HF_HUB_OFFLINE is set" in out["error"]
    else:
        assert f"cannot reach the Hugging Face hub at {DEAD_ENDPOINT}" in out["error"]
    # One try: no back-off (today's hub client retries 5 times over ~50 s).
    assert out["seconds"] < 10, out
    assert "Retrying" not in stderr and "Retry" not in stderr


@pytest.mark.slow
def test_train_offline_is_one_line(mgr, tmp_path: Path) -> None:
    mgr("task", "add", "hubtask", "--dataset", "synthetic", "--backbone", TINY_SPEC)
    env = hub_env(tmp_path, HF_ENDPOINT=DEAD_ENDPOINT)
    proc = subprocess.run(
        [sys.executable, "-m", "manager", "train", "hubtask", "--epochs", "1"],
        capture_output=True,
        text=True,
        env={**env, "MGR_HOME": str(mgr.home)},
        cwd=ROOT,
        timeout=300,
    )
    assert_clean_error(proc)  # and so no "Retrying in 8s [Retry 5/5]" lines
    assert "cannot reach the Hugging Face hub" in proc.stderr
    assert mgr.json("versions", "hubtask") == []


@pytest.mark.slow  # real weights through the hub cache
def test_cached_weights_load_with_no_network(assets: Path, tmp_path: Path) -> None:
    """The local cache is used without any request, so a dead network does not matter."""
    from safetensors.torch import load_file

    repo = tmp_path / "hf" / "hub" / "models--timm--deit_tiny_patch16_224.fb_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "model.safetensors").symlink_to(assets / "deit_tiny_patch16_224.safetensors")
    want = load_file(assets / "deit_tiny_patch16_224.safetensors")["blocks.0.attn.qkv.weight"]
    out, stderr = build("deit_tiny_patch16_224", hub_env(tmp_path, HF_ENDPOINT=DEAD_ENDPOINT))
    assert out["ok"], out
    assert out["w"] == pytest.approx(want.flatten()[:4].tolist())
    assert "Retry" not in stderr
