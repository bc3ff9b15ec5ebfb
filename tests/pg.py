"""A throw-away PostgreSQL server for the test session: initdb in a temp folder, a free port.

`find_bindir` looks for ``initdb`` and ``pg_ctl`` on PATH, then under Debian's
``/usr/lib/postgresql/<version>/bin``. The server listens on 127.0.0.1 only, with trust auth and
durability off (``fsync``, ``synchronous_commit``, ``full_page_writes``): it starts in about a
second and its data dies with the session. initdb and postgres refuse to run as root, so as root
they run as the ``postgres`` user (``runuser``) in a folder handed to that user.

A session killed before it stopped its server leaves the folder (``mgr-pg-*`` in the temp folder)
with ``owner.pid`` naming the dead pytest; the next session stops such servers and removes them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PREFIX = "mgr-pg-"
REQUIRE_ENV = "MGR_REQUIRE_POSTGRES"


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (PATH first, then the newest Debian one)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    candidates.sort(key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _postmaster_pid(data: Path) -> int | None:
    try:
        return int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def reap_leftovers(tmp: Path | None = None) -> list[Path]:
    """Stop and remove the servers of test sessions that died without stopping them."""
    removed = []
    for folder in sorted(Path(tmp or tempfile.gettempdir()).glob(PREFIX + "*")):
        try:
            owner = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        pid = _postmaster_pid(folder / "data")
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


class PgServer:
    """One running PostgreSQL server; `create_database` hands out a fresh database's URL."""

    def __init__(self, bindir: Path, tmp: Path | None = None) -> None:
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=tmp))
        (self.folder / "owner.pid").write_text(str(os.getpid()))
        self.data = self.folder / "data"
        self.log = self.folder / "server.log"
        self.port = 0
        self._count = 0
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def start(self) -> PgServer:
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        init = self._run(
            "initdb",
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        for _ in range(5):  # the free port may be taken between the probe and the start
            self.port = _free_port()
            opts = (
                f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            started = self._run(
                "pg_ctl",
                "-D",
                str(self.data),
                "-o",
                opts,
                "-l",
                str(self.log),
                "-w",
                "-t",
                "30",
                "start",
            )
            if started.returncode == 0:
                return self
        log = self.log.read_text() if self.log.exists() else ""
        raise RuntimeError(f"postgres did not start:\n{started.stderr}\n{log[-2000:]}")

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL (psycopg 3) of a database on this server."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A fresh, empty database (``<prefix>_<n>``); returns its URL."""
        import psycopg

        self._count += 1
        name = f"{prefix}_{self._count}"
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediate: its data is thrown away) and remove its folder."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=30)
        pid = _postmaster_pid(self.data)
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(50):
                if not _alive(pid):
                    break
                time.sleep(0.1)
        shutil.rmtree(self.folder, ignore_errors=True)


def missing_reason() -> str | None:
    """Why no server can be started here (no binaries, no driver), else None."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    if find_bindir() is None:
        return "PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin)"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root, and runuser (to start postgres as its own user) is missing"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no 'postgres' user to run the server as"
    return None
