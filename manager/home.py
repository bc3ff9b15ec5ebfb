"""The manager's home: where the catalog, backbones and adapter artifacts live.

This module only says where the home is; every path inside it is built, confined and written by
``manager.store.fs.Store``.

Resolution order: an explicit path (the CLI's ``--home``) > ``MGR_HOME`` > ``~/.mgr``.
The catalog URL is ``MGR_DB_URL`` when set (any SQLAlchemy URL), else a SQLite file in the home.
"""

from __future__ import annotations

import os
import socket
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
    def host(self) -> str:
        """This home's name in a shared catalog: ``MGR_HOST``, else ``<hostname>:<home path>``.

        Each home has its own live files, so each keeps its own deployment row; the path tells
        two homes on one machine apart.
        """
        return os.environ.get("MGR_HOST") or f"{socket.gethostname()}:{self.root}"

    @property
    def db_url(self) -> str:
        """``MGR_DB_URL`` if set, else ``sqlite:///<home>/catalog.db``."""
        return os.environ.get("MGR_DB_URL") or f"sqlite:///{self.root / 'catalog.db'}"
