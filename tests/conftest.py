"""Shared fixtures: a temporary manager home, the real CLI in a subprocess, tiny timm models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"

# A tiny but structurally complete ViT: every block has qkv, attn.proj, mlp.fc1, mlp.fc2.
TINY_TIMM = "deit_tiny_patch16_224"
TINY_KWARGS = {"img_size": 32, "depth": 2}
TINY_SPEC = "deit_tiny_patch16_224:img_size=32,depth=2"


def tiny_vit(num_classes: int = 5, seed: int = 0, **overrides):
    """A real timm DeiT-tiny, 2 blocks, 32 px: fast on 2 CPU cores."""
    import timm
    import torch

    torch.manual_seed(seed)
    kwargs = {**TINY_KWARGS, **overrides}
    return timm.create_model(TINY_TIMM, pretrained=False, num_classes=num_classes, **kwargs).eval()


@pytest.fixture
def assets() -> Path:
    """The shared real data and weights; skipped where they are absent (a user's machine)."""
    if not (ASSETS / "deit_tiny_patch16_224.safetensors").exists():
        pytest.skip(f"real assets not found at {ASSETS}")
    return ASSETS


@pytest.fixture
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """An empty manager home in the test's tmp_path; in a test or module marked
    ``@pytest.mark.trained_home``, a copy of the switch template instead (three trained tasks,
    built once per run: switch_helpers.template_home)."""
    if request.node.get_closest_marker("trained_home") is not None:
        from switch_helpers import copy_home, template_home

        base = request.getfixturevalue("tmp_path_factory").getbasetemp()
        return copy_home(template_home(base), tmp_path / "home")
    h = tmp_path / "mgr-home"
    h.mkdir()
    return h


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child ``mgr``: no stray ``MGR_*`` variables, and this checkout's
    ``manager`` first on the path, whatever the child's working folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGR_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


class CLI:
    """Runs the real `mgr` in a subprocess against one home.

    The child works in the folder that holds the home (a test's tmp_path), never in the
    checkout: a relative output path a test passes lands in its own temporary folder.
    """

    def __init__(self, home: Path, **env: str):
        self.home = home
        self.cwd = home.parent
        self.extra = env  # e.g. MGR_DB_URL: set for every command

    def env(self, **extra: str) -> dict[str, str]:
        env = child_env(MGR_HOME=str(self.home), PYTHONUNBUFFERED="1", **self.extra)
        env.update(extra)
        return env

    def __call__(
        self, *args: str, ok: bool = True, timeout: float = 600, cwd: Path | None = None, **env: str
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "manager", *args],
            capture_output=True,
            text=True,
            env=self.env(**env),
            timeout=timeout,
            cwd=cwd or self.cwd,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"mgr {' '.join(args)} exited {proc.returncode}\n"
                f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def popen(self, *args: str) -> subprocess.Popen:
        """Start `mgr ARGS` without waiting (for concurrency and kill tests)."""
        return subprocess.Popen(
            [sys.executable, "-m", "manager", *args],
            env=self.env(),
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def json(self, *args: str, **env: str):
        return json.loads(self(*args, "--json", **env).stdout)


@pytest.fixture
def mgr(home: Path) -> CLI:
    return CLI(home)


class InProcessCLI:
    """Runs `mgr` in this process through click's CliRunner, against one home: for argument
    parsing, usage errors and help text, where a subprocess would only add seconds. Kills,
    crashes, the real server and import costs keep the subprocess (`CLI`)."""

    def __init__(self, home: Path, **env: str):
        self.home = home
        self.extra = env

    def __call__(self, *args: str, ok: bool = True, **env: str) -> subprocess.CompletedProcess:
        from click.testing import CliRunner

        from manager.cli import main

        unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("MGR_")}
        full = {**unset, "MGR_HOME": str(self.home), **self.extra, **env}
        result = CliRunner().invoke(main, list(args), env=full, prog_name="mgr")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception  # what `python -m manager` would print as a traceback: a bug
        proc = subprocess.CompletedProcess(
            ["mgr", *args], result.exit_code, result.stdout, result.stderr
        )
        if ok and proc.returncode != 0:
            raise AssertionError(f"mgr {' '.join(args)} exited {proc.returncode}\n{proc.stderr}")
        return proc

    def json(self, *args: str, **env: str):
        return json.loads(self(*args, "--json", **env).stdout)


@pytest.fixture
def cli(home: Path) -> InProcessCLI:
    """`mgr` in process (CliRunner) against `home`; `mgr` is the same in a subprocess."""
    return InProcessCLI(home)


def assert_clean_error(proc: subprocess.CompletedProcess) -> None:
    """A refused command: non-zero exit, a one-line message, no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") or lines[0].startswith("Error: "), lines[0]


# -- PostgreSQL: one server per session, a fresh database per test (tests/pg.py) ------------------


@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for the session; skipped where none can run, unless required."""
    from pg import REQUIRE_ENV, PgServer, find_bindir, missing_reason, reap_leftovers

    reason = missing_reason()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    reap_leftovers()
    server = PgServer(find_bindir())
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return pg_server.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """A catalog URL on each back-end: the `home` fixture's SQLite file, then a fresh PostgreSQL
    database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mgr-home' / 'catalog.db'}"
    return request.getfixturevalue("pg_url")
