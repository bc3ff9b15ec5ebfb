"""README's main job: the demo picks its data, says why, runs every step and compares methods."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, assert_clean_error

from manager.cli.demo import checkout_assets

# A proxy on a closed loopback port: every HTTP(S) request is refused at once, as on a machine
# without a network (and without waiting for DNS or the hub client's retries).
DEAD_NETWORK = {
    k: "http://127.0.0.1:9" for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
}


def _table_rows(stdout: str) -> list[str]:
    """The lines of the closing side-by-side table (after its title)."""
    tail = stdout.split("this run: each method with the same data", 1)[1]
    return [ln for ln in tail.splitlines() if "│" in ln]


@pytest.mark.slow
def test_offline_demo_then_fallback_when_the_network_is_unreachable(mgr, home):
    proc = mgr("demo", "--offline", "--epochs", "1")
    assert "demo data: generated shapes and a tiny random ViT (--offline)" in proc.stdout
    assert "$ mgr train shapes" in proc.stdout and "$ mgr storage" in proc.stdout
    assert "verified:  yes" in proc.stdout
    rows = _table_rows(proc.stdout)
    for task in ("shapes", "shapes4"):
        methods = [r for r in rows if r.split("│")[1].strip() == task]
        assert [r.split("│")[2].strip() for r in methods] == ["Consolidator", "linear probe"]
        # top-1 %, bytes, % of the backbone are filled in for every row
        assert all("%" in r.split("│")[5] and r.split("│")[3].strip() != "-" for r in methods)
    assert "it shows the workflow, not the method's accuracy" in proc.stdout
    picture = home / "storage.png"
    assert f"storage picture (bytes against top-1, budgets, full fine-tuning): {picture}" in (
        proc.stdout
    )
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    tasks = {t["name"]: t for t in mgr.json("task", "list")}
    assert set(tasks) == {"shapes", "shapes4"}
    assert tasks["shapes4"]["versions"] == 2 and tasks["shapes4"]["active_version"] == 1
    assert mgr.json("status")["verified"] is True

    # Asked for the real data with no network: it says why, falls back, and reuses the tasks.
    proc = mgr("demo", "--download", "--epochs", "1", **DEAD_NETWORK)
    choice = next(ln for ln in proc.stdout.splitlines() if ln.startswith("demo data:"))
    assert choice.startswith("demo data: generated shapes and a tiny random ViT (--download, ")
    assert "the download failed: URLError" in choice and "Connection refused" in choice
    assert [v["number"] for v in mgr.json("versions", "shapes")] == [1, 2, 3, 4]
    assert len(_table_rows(proc.stdout)) == 4  # only this run's versions are compared
    # Nothing was downloaded; the cache holds at most the hub's empty folder.
    assert not (home / "cache" / "datasets").exists()
    assert not (home / "cache" / "weights").exists()


def test_bad_flags_are_refused_cleanly(mgr, tmp_path: Path):
    assert_clean_error(mgr("demo", "--offline", "--download", ok=False))
    proc = mgr("demo", "--assets", str(tmp_path), ok=False)
    assert_clean_error(proc)
    assert "deit_tiny_patch16_224.safetensors" in proc.stderr
    proc = mgr("demo", "--offline", "--plot", str(mgr.home / "artifacts" / "x.png"), ok=False)
    assert_clean_error(proc)
    assert "inside the manager home" in proc.stderr and "$ mgr" not in proc.stdout


def test_assets_are_looked_for_beside_the_checkout_only():
    # Run from this checkout (editable install): ../shared/assets beside the repository.
    assert checkout_assets() == ROOT.parent / "shared" / "assets"
