"""README tells the truth: its Python example runs, and its command table is ``mgr --help``'s."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
from conftest import InProcessCLI

from manager.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


def test_the_python_api_example_runs(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", _section("Python API"), re.S)
    assert blocks, "README's Python API section has no python block"
    (tmp_path / "example.py").write_text(blocks[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGR_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loss per epoch: [" in proc.stdout
    assert "tasks: []" in proc.stdout
    assert "error: unknown task 'pets'\n" in proc.stdout  # the library's words: no CLI hint
    assert (tmp_path / "pets.safetensors").stat().st_size > 0
    assert (tmp_path / "mgr-home" / "catalog.db").is_file()  # the example made its own home


def _table_commands() -> dict[str, set[str]]:
    """``{command: {subcommands}}`` named in the first column of README's command table."""
    rows = [ln for ln in _section("Using it").splitlines() if ln.startswith("| `mgr ")]
    assert len(rows) > 10, "README's command table was not found"
    found: dict[str, set[str]] = {}
    for row in rows:
        first = row.split(" | ")[0]
        for snippet in re.findall(r"`mgr ([^`]*)`", first):
            name, _, rest = snippet.partition(" ")
            subs = found.setdefault(name, set())
            # "task list / show NAME / remove NAME", "alias set/list/remove", "budget show"
            subs.update(re.findall(r"(?:^|/)\s*([a-z][a-z-]*)", rest))
    return found


def _help_commands() -> set[str]:
    out = InProcessCLI(Path("/nonexistent-mgr-home"))("--help").stdout  # --help reads no home
    listing = out.split("Commands:\n", 1)[1]
    return {m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*)\s", listing, re.M)}


def test_the_command_table_matches_mgr_help() -> None:
    table, helped = _table_commands(), _help_commands()
    assert helped == set(main.commands), "mgr --help and the click group disagree"
    assert sorted(set(table) - helped) == [], "the table names commands mgr does not have"
    assert sorted(helped - set(table)) == [], "mgr commands missing from README's table"
    for name, subs in table.items():
        command = main.commands[name]
        if isinstance(command, click.Group):
            assert subs, f"the table names no subcommand of the group 'mgr {name}'"
            assert sorted(subs - set(command.commands)) == [], f"unknown 'mgr {name}' subcommands"
            missing = sorted(set(command.commands) - subs)
            assert missing == [], f"'mgr {name}' subcommands missing from the table: {missing}"


def test_the_table_parser_is_not_vacuous() -> None:
    table = _table_commands()
    assert table["task"] >= {"add", "list", "show", "remove"}
    assert table["alias"] >= {"set", "list", "remove"}
    assert "train" in table and "demo" in table
