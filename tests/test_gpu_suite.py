"""bench/gpu_suite.py on the CPU: every section runs on tiny shapes (--smoke) and writes its table
and JSON, each naming the hardware; an exhausted budget skips and says so; without SQLAlchemy and
Alembic the catalog's sections are skipped and the others still run (the imports are lazy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "bench" / "gpu_suite.py"
SECTIONS = ["1_switch", "2_inference", "3_train", "4_multitask", "5_serve"]


def run_suite(out: Path, *args: str, prelude: str = "") -> subprocess.CompletedProcess:
    """The suite as a script in a fresh interpreter; ``prelude`` runs first (to block imports)."""
    argv = [str(SUITE), "--device", "cpu", "--out", str(out), *args]
    code = (
        f"import runpy, sys\n{prelude}\nsys.argv = {argv!r}\n"
        f"runpy.run_path({str(SUITE)!r}, run_name='__main__')"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def check_hardware(text: str, hw: dict) -> None:
    line = next(x for x in text.splitlines() if x.startswith("hardware: "))
    assert f"torch {torch.__version__}" in line
    assert f"{hw['cores']} cores" in line and f"CPU {hw['cpu']}" in line
    assert "no GPU used" in line  # --device cpu


@pytest.mark.slow
def test_smoke_runs_every_section_and_writes_tables(tmp_path: Path):
    out = tmp_path / "out"
    p = run_suite(out, "--smoke", "--threads", "1")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    hw = summary["hardware"]
    assert hw["torch"] == torch.__version__ and hw["cores"] >= 1 and hw["gpu"] is None
    assert [s["status"] for s in summary["sections"]] == ["done"] * 5, summary
    for stem in SECTIONS:
        md = (out / f"{stem}.md").read_text()
        rec = json.loads((out / f"{stem}.json").read_text())
        check_hardware(md, hw)
        assert rec["hardware"] == hw and rec["status"] == "done" and rec["rows"], stem
        assert md.count("\n|") >= 2 + len(rec["rows"])  # header, rule, one line per row
        assert md in p.stdout  # each table is printed too
    switch = json.loads((out / "1_switch.json").read_text())
    assert switch["settings"]["mismatches"] == 0
    assert any("bit-identical" in n for n in switch["notes"])
    assert all(r["ms"] > 0 for r in switch["rows"])
    train = json.loads((out / "3_train.json").read_text())
    assert {r["setting"] for r in train["rows"]} == {"bf16 eager", "bf16 compiled"}
    assert train["settings"]["mgr train img/s"] > 0
    multi = json.loads((out / "4_multitask.json").read_text())
    assert [r["model"] for r in multi["rows"]] == ["merged (one task)", "8 tasks, mixed batches"]
    serve = json.loads((out / "5_serve.json").read_text())
    assert [r["errors"] for r in serve["rows"]] == [0, 0, 0]
    assert all(r["req/s"] > 0 for r in serve["rows"])


def test_exhausted_budget_skips_every_section_and_says_so(tmp_path: Path):
    out = tmp_path / "out"
    p = run_suite(out, "--budget-s", "0")
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["sections"]] == [s.split("_")[1] for s in SECTIONS]
    for s in summary["sections"]:
        assert s["status"] == "skipped"
        assert any("budget exhausted" in x for x in s["skipped"]), s
    text = (out / "summary.md").read_text()
    check_hardware(text, summary["hardware"])
    assert text.count("skipped whole section: budget exhausted") == 5
    for stem in SECTIONS:
        assert "status: skipped" in (out / f"{stem}.md").read_text()


@pytest.mark.slow  # runs the whole suite script
def test_without_the_catalog_packages_only_catalog_sections_are_skipped(tmp_path: Path):
    out = tmp_path / "out"
    block = "sys.modules['sqlalchemy'] = None; sys.modules['alembic'] = None"
    p = run_suite(out, "--smoke", "--sections", "switch,serve", prelude=block)
    assert p.returncode == 0, p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    by = {s["name"]: s for s in summary["sections"]}
    assert by["switch"]["status"] == "done"
    assert by["serve"]["status"] == "skipped"
    assert by["serve"]["skipped"] == ["mgr serve: needs sqlalchemy and alembic (not installed)"]
    assert summary["not_asked"] == ["inference", "train", "multitask"]


def test_bad_arguments_are_one_line_errors(tmp_path: Path):
    p = run_suite(tmp_path / "o", "--sections", "switch,warp")
    assert p.returncode == 2 and "unknown section 'warp'" in p.stderr
    assert "Traceback" not in p.stderr
