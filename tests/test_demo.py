"""README's main job: the demo picks its data, says why, runs every step and compares methods."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, assert_clean_error

from manager.registry.assets import checkout_assets

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


def test_real_plan_compares_four_methods_at_mgr_train_defaults(tmp_path: Path):
    from manager.cli.demo import _plan
    from manager.registry.assets import Source

    plan = _plan(None, Source(tmp_path, tmp_path / "w.safetensors", "test"), None)  # type: ignore[arg-type]
    for task in ("flowers102", "pets"):
        runs = [a for a in plan if a[:2] == ["train", task]]
        methods = [a[a.index("--method") + 1] if "--method" in a else "consolidator" for a in runs]
        assert methods == ["consolidator", "linear", "bitfit", "lora"]
        # Same data and schedule for all; no method gets a rate of its own: mgr train's defaults.
        schedules = {tuple(x for x in a[2:] if x not in ("--method", m, "--no-promote"))
                     for a, m in zip(runs, methods, strict=True)}  # fmt: skip
        assert len(schedules) == 1
        assert not any(x.startswith("--lr") for a in runs for x in a)


def test_the_demo_says_in_one_line_where_the_consolidator_does_not_lead():
    from manager.cli.demo import lead_note

    assert lead_note("pets", {"Consolidator": 56.1, "BitFit": 54.5, "LoRA r=8": 45.5}) is None
    note = lead_note("pets", {"Consolidator": 54.0, "BitFit": 55.4, "linear probe": 30.0})
    assert note is not None and "\n" not in note
    assert note.startswith("pets: BitFit leads the Consolidator")
    assert "(55.4% vs 54.0%)" in note and "BENCHMARKS.md" in note
    tie = lead_note("f", {"Consolidator": 50.0, "LoRA r=8": 50.0})
    assert tie is not None and "LoRA r=8 ties" in tie
    assert lead_note("f", {"BitFit": 50.0}) is None  # no Consolidator trained: nothing to say
