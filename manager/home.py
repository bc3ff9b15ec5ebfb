"""The manager's home: where the catalog, backbones and adapter artifacts live.

Resolution order: an explicit path (the CLI's ``--home``) > ``MGR_HOME`` > ``~/.mgr``.
The catalog URL is ``MGR_DB_URL`` when set (any SQLAlchemy URL), else a SQLite file in the home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from manager.errors import MgrError

DEFAULT_HOME = "~/.mgr"


@dataclass(frozen=True)
class Home:
    """One manager home folder and the paths inside it."""

    root: Path

    @classmethod
    def resolve(cls, home: str | os.PathLike[str] | None = None) -> Home:
        """The home from an explicit path, else ``MGR_HOME``, else ``~/.mgr`` (made absolute)."""
        raw = home if home not in (None, "") else os.environ.get("MGR_HOME") or DEFAULT_HOME
        return cls(Path(raw).expanduser().resolve())

    def ensure(self) -> Home:
        """Create the home folder if needed; return self."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MgrError(f"cannot create the manager home {self.root}: {exc.strerror}") from exc
        return self

    @property
    def db_url(self) -> str:
        """``MGR_DB_URL`` if set, else ``sqlite:///<home>/catalog.db``."""
        return os.environ.get("MGR_DB_URL") or f"sqlite:///{self.root / 'catalog.db'}"

    @property
    def migrate_lock(self) -> Path:
        """File lock serialising migrations of processes that start at the same moment."""
        return self.root / ".migrate.lock"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def backbones(self) -> Path:
        return self.root / "backbones"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def task_dir(self, task_name: str) -> Path:
        """``<home>/artifacts/<task>/``; the name must already be validated."""
        return self.artifacts / task_name

    def checkpoint(self, task_name: str) -> Path:
        """``<home>/runs/<task>/checkpoint.pt``: the epoch checkpoint of the task's training run."""
        return self.root / "runs" / task_name / "checkpoint.pt"

    def rel(self, path: str | os.PathLike[str]) -> str:
        """`path` relative to the home, as stored in the catalog (POSIX separators)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def abs(self, rel: str) -> Path:
        """An absolute path from a catalog path relative to the home."""
        return self.root / rel
