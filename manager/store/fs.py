"""The one module that touches the filesystem under a home: it builds, confines and mutates paths.

Every path ``mgr`` writes, renames or deletes is built here and resolved (symlinks followed) before
use; anything that does not land under the home (or a configured artifact root) is refused with an
`MgrError`, so a planted symlink or a catalog row such as ``../victim`` can never make ``mgr``
write or delete outside. Paths read from the catalog are relative and go through `Store.resolve`.

``MGR_ARTIFACT_ROOT`` (a folder every machine of a shared catalog mounts at its own path) holds
``artifacts/`` and ``backbones/`` instead of the home, and catalog paths are relative to it, so
one machine's ``artifacts/pets/v3.safetensors`` and W0 are found by every other one; each home
keeps its own ``live/``, ``runs/`` and ``cache/``.

Temporary files carry their writer's pid and machine (``.<name>.tmp-<pid>@<host>-<rnd>``,
``.pending-<pid>@<host>-<rnd>.safetensors``, ``<host>`` a short hash of the host name), which is
how `mgr gc` tells a running writer's file from an orphan left by a killed one: by the pid on this
machine, by age (`FOREIGN_TEMP_TTL_S`) for another machine's file in a shared artifact root.

No other module calls ``unlink``, ``rmtree``, ``os.replace``, ``open(..., "w")`` and the like on a
home path; ``tests/test_layout.py`` checks that. The one exception to confinement is output the
user explicitly asked for elsewhere (``mgr export --out DIR``, ``--plot FILE``): `write_export` and
`write_user_file`, which only ever add or replace the named files, never delete.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from manager.errors import BadInput, Conflict, Corrupt, MgrError
from manager.home import Home

ARTIFACT_ROOT_ENV = "MGR_ARTIFACT_ROOT"
CATALOG_ID_FILE = "catalog-id"

# Another machine's temporary file in a shared artifact root cannot be checked by pid: it is an
# orphan once this old (a write takes seconds; a pending artifact lives for one transaction).
FOREIGN_TEMP_TTL_S = 24 * 3600

# ".<name>.tmp-<pid>@<host>-<rnd>" (atomic writes) and ".pending-<pid>@<host>-<rnd>.safetensors"
# (a trainer's artifact before it has a version number); "@<host>" is absent from older names.
_TEMP = re.compile(r"^\..+\.tmp-(\d+)(?:@([0-9a-f]+))?-[0-9a-f]+$")
_PENDING = re.compile(r"^\.pending-(\d+)(?:@([0-9a-f]+))?-[0-9a-f]+\.safetensors$")
_HEX = re.compile(r"[0-9a-f]{16,128}")


def host_tag() -> str:
    """This machine in temporary file names: 8 hex digits of its host name's hash."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _temp_match(path: str | os.PathLike[str]) -> re.Match[str] | None:
    name = Path(path).name
    return _TEMP.match(name) or _PENDING.match(name)


def temp_owner(path: str | os.PathLike[str]) -> int | None:
    """The pid that owns a temporary file of ours (by its name), else None."""
    m = _temp_match(path)
    return int(m.group(1)) if m else None


def temp_writer_alive(path: str | os.PathLike[str]) -> bool:
    """Whether the writer of a temporary file of ours may still be running.

    This machine's (or an untagged, older name): its pid exists. Another machine's: the file is
    younger than `FOREIGN_TEMP_TTL_S` (its pid means nothing here).
    """
    m = _temp_match(path)
    if m is None:
        return False
    if m.group(2) is None or m.group(2) == host_tag():
        return pid_alive(int(m.group(1)))
    try:
        age = time.time() - os.lstat(path).st_mtime
    except FileNotFoundError:
        return False
    return age < FOREIGN_TEMP_TTL_S


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (a reused pid keeps a file: the safe side)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def read_only_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether files cannot be created in ``folder`` (or its nearest existing parent): a
    read-only mount, or no permission."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        if os.statvfs(p).f_flag & os.ST_RDONLY:
            return True
    except OSError:
        return False
    return not os.access(p, os.W_OK)


# Texts of a full disk in errors that carry no errno: torch.save's stream writer ("file write
# failed"), safetensors' Rust io errors ("os error 28"), SQLite ("database or disk is full").
_NO_SPACE_TEXT = ("no space left", "os error 28", "os error 122", "disk is full")
_WRITE_FAILED_TEXT = ("write failed", "unexpected pos", "disk i/o error")
MB = 1_000_000


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    """Bytes an unprivileged writer may still use on ``folder``'s file system (None: unknown)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_no_space(
    exc: BaseException, folder: str | os.PathLike[str] | None = None, need: int | None = None
) -> bool:
    """Whether ``exc`` says the disk (or quota) is full. A write error without an errno
    (torch.save's, SQLite's "disk I/O error") counts when ``folder``'s file system has less
    room than ``need`` bytes (the write's size), or under 1 MB."""
    for e in (exc, exc.__cause__, exc.__context__, getattr(exc, "orig", None)):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e).lower() if e is not None else ""
        if any(t in text for t in _NO_SPACE_TEXT):
            return True
        if folder is not None and any(t in text for t in _WRITE_FAILED_TEXT):
            free = free_bytes(folder)
            if free is not None and free < max(MB, need or 0):
                return True
    return False


def no_space_message(what: str, path: str | os.PathLike[str], need: int | None = None) -> str:
    """``no space left on device while writing <what> (<path>); free N MB and rerun``."""
    free = free_bytes(Path(path).parent) or 0
    short = max(1, -(-((need or 0) - free) // MB)) if need else None
    amount = f"{short} MB" if short else "some space"
    return f"no space left on device while writing {what} ({path}); free {amount} and rerun"


def not_regular(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it exists but is not a regular file ("a folder", "a FIFO (named
    pipe)", "a character device"...; links followed), else None. Reading a FIFO or /dev/zero as
    weights would block or never end."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _fsync_dir(folder: Path) -> None:
    # Not every platform lets a directory be opened for fsync; the rename is still atomic.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _replacing(
    dest: Path, mode: int, recheck: Callable[[Path], Path] | None = None
) -> Iterator[Path]:
    """A temporary file beside ``dest``: fsynced and renamed over it on success, else removed.
    ``recheck`` re-confines the destination just before the rename."""
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}@{host_tag()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, recheck(dest) if recheck else dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(dest.parent)


NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def check_user_path(real: Path, shown: str | os.PathLike[str]) -> None:
    """Refuse, in words, a user's output path the OS would reject with an errno: a name too
    long, or a parent that is a file (so nothing is tried, and no traceback comes of it)."""
    for part in real.parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX:
            short = part if len(part) <= 24 else part[:20] + "..."
            raise BadInput(
                f"cannot write {short!r} (in {str(shown)[:60]}): the name is {size} bytes, "
                f"file systems allow at most {NAME_MAX}"
            )
    for parent in reversed(real.parents):  # from the top down to the first that is missing
        try:
            is_dir = parent.is_dir()
            exists = is_dir or parent.exists()
        except OSError:
            return  # unreadable: the write reports it in its words
        if not exists:
            return
        if not is_dir:
            raise BadInput(f"cannot write {shown}: its parent {parent} is a file, not a folder")


def _user_mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MgrError(f"cannot create {folder}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class Store:
    """The file store of one home: every path it hands out is confined under its roots."""

    home: Home
    artifact_root: Path | None = None

    @classmethod
    def of(cls, home: Home) -> Store:
        """The home's store; ``MGR_ARTIFACT_ROOT`` moves artifacts and backbones to that folder."""
        extra = os.environ.get(ARTIFACT_ROOT_ENV)
        if not extra:
            return cls(home, None)
        root = Path(extra).expanduser().resolve()
        if root.exists() and not root.is_dir():
            # Else every artifact under it reads as missing, and nothing can be written there.
            what = not_regular(root) or "a file"
            raise MgrError(f"{ARTIFACT_ROOT_ENV}={extra} is {what}, not a folder")
        return cls(home, root)

    # -- confinement -------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return Path(os.path.realpath(self.home.root))

    @property
    def data_root(self) -> Path:
        """Where ``artifacts/`` and ``backbones/`` live and catalog paths start: the artifact
        root if one is set, else the home."""
        if self.artifact_root is None:
            return self.root
        return Path(os.path.realpath(self.artifact_root))

    def _roots(self) -> list[Path]:
        roots = [self.root]
        if self.artifact_root is not None:
            roots.append(self.data_root)
        return roots

    def confine(self, path: str | os.PathLike[str]) -> Path:
        """``path`` with every symlink resolved, if that lies under the home; else MgrError."""
        real = Path(os.path.realpath(path))
        for root in self._roots():
            if real == root or root in real.parents:
                return real
        raise Corrupt(
            f"refusing to touch {path}: it resolves to {real}, outside the manager home "
            f"{self.root} (a symbolic link or a bad catalog path?)"
        )

    def _data_root_name(self) -> str:
        return "the home" if self.artifact_root is None else f"the artifact root {self.data_root}"

    def resolve(self, rel: str) -> Path:
        """An absolute, confined path from a path recorded in the catalog (relative to the data
        root, no '..')."""
        p = Path(rel) if isinstance(rel, str) and rel else None
        if p is None or p.is_absolute() or ".." in p.parts or "\x00" in rel:
            raise Corrupt(
                f"the catalog holds a bad path {rel!r}: it must be relative to "
                f"{self._data_root_name()}"
            )
        return self.confine(self.data_root / p)

    def rel(self, path: str | os.PathLike[str]) -> str:
        """``path`` relative to the data root, as the catalog records it (POSIX separators)."""
        real = self.confine(path)
        if real != self.data_root and self.data_root not in real.parents:
            raise MgrError(
                f"{real} is not under {self._data_root_name()}: the catalog cannot record it"
            )
        return real.relative_to(self.data_root).as_posix()

    def shown(self, path: str | os.PathLike[str]) -> str:
        """``path`` for reports: relative to the home when under it, else absolute (a file in
        the artifact root); either way ``store.root / shown`` is the path again."""
        p = Path(path)
        return p.relative_to(self.root).as_posix() if self.root in p.parents else str(p)

    # -- where things live ---------------------------------------------------------------------

    @property
    def artifacts(self) -> Path:
        return self.data_root / "artifacts"

    @property
    def backbones(self) -> Path:
        return self.data_root / "backbones"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def live(self) -> Path:
        return self.root / "live"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def task_dir(self, task: str) -> Path:
        """``<home>/artifacts/<task>/`` (the name is validated when the task is created)."""
        return self.confine(self.artifacts / task)

    def artifact(self, task: str, number: int) -> Path:
        return self.confine(self.artifacts / task / f"v{number}.safetensors")

    def pending_artifact(self, task: str) -> Path:
        """A fresh name for a trainer's artifact before it is numbered (owned by this pid)."""
        name = f".pending-{os.getpid()}@{host_tag()}-{secrets.token_hex(4)}.safetensors"
        return self.confine(self.artifacts / task / name)

    def run_dir(self, task: str) -> Path:
        return self.confine(self.runs / task)

    def checkpoint(self, task: str) -> Path:
        """``<home>/runs/<task>/checkpoint.pt``: the epoch checkpoint of the task's training run."""
        return self.confine(self.runs / task / "checkpoint.pt")

    def backbone_file(self, digest: str) -> Path:
        return self.confine(self.backbones / f"{digest[:16]}.safetensors")

    def live_dir(self, digest: str) -> Path:
        """``<home>/live/<digest[:16]>/``: one bound backbone's live files (``digest``: its
        content hash, hex; anything else is refused, so a catalog value cannot name a path)."""
        if not _HEX.fullmatch(digest or ""):
            raise Corrupt(f"refusing a live folder for backbone hash {digest!r}: not hex")
        return self.confine(self.live / digest[:16])

    @property
    def live_weights(self) -> Path:
        """The single live file of homes before migration 0005 (moved on first open)."""
        return self.confine(self.live / "backbone.safetensors")

    @property
    def live_head(self) -> Path:
        """The single head file of homes before migration 0005 (moved on first open)."""
        return self.confine(self.live / "head.safetensors")

    @property
    def live_lock_file(self) -> Path:
        """One lock for all live folders: one switcher at a time in a home."""
        return self.confine(self.live / ".lock")

    @property
    def migrate_lock_file(self) -> Path:
        return self.confine(self.root / ".migrate.lock")

    @property
    def catalog_id_files(self) -> list[Path]:
        """``catalog-id`` in the home (and in the artifact root, whose files gc also deletes):
        the id of the catalog these files belong to (``manager.catalog.identity``)."""
        return [self.confine(r / CATALOG_ID_FILE) for r in self._roots()]

    def read_catalog_ids(self) -> dict[Path, str | None]:
        """Each ``catalog-id`` file and the id it holds (None where there is none yet)."""
        out: dict[Path, str | None] = {}
        for p in self.catalog_id_files:
            try:
                out[p] = p.read_text(encoding="ascii", errors="replace").strip() or None
            except (FileNotFoundError, NotADirectoryError):
                out[p] = None
            except OSError as exc:
                raise MgrError(f"cannot read {p}: {exc.strerror or exc}") from None
        return out

    def write_catalog_id(self, catalog_id: str) -> None:
        """Record (atomically) in the home and the artifact root which catalog they belong to."""
        for p in self.catalog_id_files:
            self.write_bytes(p, catalog_id.encode("ascii") + b"\n")

    # -- mutations -----------------------------------------------------------------------------

    def mkdir(self, path: str | os.PathLike[str]) -> Path:
        """Create a folder (and its parents) under the home."""
        real = self.confine(path)
        try:
            real.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MgrError(f"cannot create {real}: {exc.strerror or exc}") from None
        return self.confine(real)  # a parent may have been a link made meanwhile

    @contextlib.contextmanager
    def atomic(
        self,
        path: str | os.PathLike[str],
        mode: int = 0o644,
        what: str | None = None,
        need: int | None = None,
    ) -> Iterator[Path]:
        """Yield a temporary path next to ``path``; on success it replaces ``path``.

        Write the temporary file by any means (e.g. ``safetensors.torch.save_file``); it is
        fsynced, renamed over ``path`` and the folder fsynced, so readers see the old file or the
        new one, never a torn one. On error the temporary file is removed; a full disk is an
        `MgrError` naming ``what`` and about how much to free (``need``: the bytes written).
        """
        dest = self.confine(path)
        self.mkdir(dest.parent)
        try:
            with _replacing(dest, mode, self.confine) as tmp:
                yield tmp
        except MgrError:
            raise
        except Exception as exc:
            if is_no_space(exc, dest.parent, need):
                raise MgrError(no_space_message(what or dest.name, dest, need)) from None
            raise

    # -- what the user asked to have written elsewhere -------------------------------------------
    # The one exception to confinement: `mgr export --out DIR` and `--plot FILE` write where the
    # user points, by design. Both are narrow: whole files written to a temporary name and renamed
    # (symlinks in the user's path followed: that is where they asked for it), never into the
    # home's managed folders, and nothing already there is ever deleted.

    def user_path(self, path: str | os.PathLike[str], what: str = "the output") -> Path:
        """The real path (symlinks followed) of output the user asked for; MgrError if it lies
        inside the home or the artifact root, which mgr alone manages."""
        real = Path(os.path.realpath(Path(path).expanduser()))
        for root in self._roots():
            if real == root or root in real.parents:
                raise BadInput(
                    f"refusing to write {what} {path} inside the manager home {root}: "
                    "choose a path outside it"
                )
        check_user_path(real, path)
        return real

    def open_user_log(self, path: str | os.PathLike[str], what: str = "the log") -> IO[str]:
        """A log file the user named, opened to append lines (created if missing); MgrError if it
        lies inside the home, is a folder, or cannot be opened."""
        dest = self.user_path(path, what)
        if dest.is_dir():
            raise BadInput(f"{what} {path} is a folder; name a file")
        try:
            _user_mkdir(dest.parent)
            return open(dest, "a", encoding="utf-8", buffering=1)
        except OSError as exc:
            raise MgrError(f"cannot open {what} {path}: {exc.strerror or exc}") from None

    def write_user_file(self, path: str | os.PathLike[str], data: bytes) -> Path:
        """Write one file the user named (e.g. ``--plot out.png``) atomically; an existing file
        is replaced, a folder refused. Parent folders are created. Returns the real path."""
        dest = self.user_path(path, "the file")
        if dest.is_dir():
            raise BadInput(f"{path} is a folder; name a file to write")
        _user_mkdir(dest.parent)
        try:
            with _replacing(dest, 0o644) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:
            raise MgrError(f"cannot write {dest}: {exc.strerror or exc}") from None
        return dest

    def write_export(
        self, out_dir: str | os.PathLike[str], files: dict[str, bytes], force: bool = False
    ) -> Path:
        """Write ``files`` (plain names -> bytes) into the user's folder ``out_dir``.

        A new folder is filled under a temporary name and renamed into place, so it appears whole
        or not at all. An existing empty folder is filled file by file, each atomically; a folder
        with anything in it is refused unless ``force``, which replaces only the named files and
        leaves everything else there alone. Returns the real folder written.
        """
        bad = [n for n in files if not n or n != Path(n).name or n.startswith(".")]
        if bad:
            raise BadInput(f"bad export file name {bad[0]!r}")
        dest = self.user_path(out_dir, "the export")
        if dest.exists() and not dest.is_dir():
            raise BadInput(f"the export folder {out_dir} is a file, not a folder")
        if dest.is_dir():
            if any(dest.iterdir()) and not force:
                raise Conflict(
                    f"the export folder {out_dir} is not empty; choose a new folder",
                    hint=f"or pass --force to replace {', '.join(sorted(files))} there (nothing "
                    "else is touched)",
                )
            try:
                for name, data in files.items():
                    with _replacing(dest / name, 0o644) as tmp:
                        tmp.write_bytes(data)
            except OSError as exc:
                raise MgrError(f"cannot write into {dest}: {exc.strerror or exc}") from None
            return dest
        _user_mkdir(dest.parent)
        stage = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            os.mkdir(stage, 0o755)
            try:
                for name, data in files.items():
                    with _replacing(stage / name, 0o644) as tmp:
                        tmp.write_bytes(data)
                os.rename(stage, dest)  # fails, touching nothing, if a non-empty folder appeared
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)  # only our own staging folder
                raise
        except OSError as exc:
            raise MgrError(f"cannot write {dest}: {exc.strerror or exc}") from None
        _fsync_dir(dest.parent)
        return dest

    def write_bytes(
        self, path: str | os.PathLike[str], data: bytes, what: str | None = None
    ) -> int:
        """Write ``data`` to ``path`` atomically; returns the byte count."""
        with self.atomic(path, what=what, need=len(data)) as tmp:
            tmp.write_bytes(data)
        return len(data)

    def copy(
        self, src: str | os.PathLike[str], dest: str | os.PathLike[str], what: str | None = None
    ) -> None:
        """Copy a file to ``dest`` (under the home) atomically; ``src`` is only read."""
        with self.atomic(dest, what=what, need=os.stat(src).st_size) as tmp:
            shutil.copyfile(src, tmp)

    def replace(self, src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
        """Rename ``src`` over ``dest`` (both under the home); returns the destination."""
        a, b = self.confine(src), self.confine(dest)
        os.replace(a, b)
        _fsync_dir(b.parent)
        return b

    def _remove_link(self, p: Path) -> bool:
        """Remove ``p`` itself if it is a symbolic link (never what it points to)."""
        if not p.is_symlink():
            return False
        self.confine(p.parent)
        p.unlink()
        return True

    def unlink(self, path: str | os.PathLike[str]) -> bool:
        """Delete a file under the home; False if it was not there."""
        p = Path(path)
        if self._remove_link(p):
            return True
        real = self.confine(p)
        try:
            real.unlink()
        except FileNotFoundError:
            return False
        except IsADirectoryError:
            raise MgrError(f"refusing to delete {real}: it is a folder") from None
        return True

    def rmtree(self, path: str | os.PathLike[str]) -> bool:
        """Delete a folder under the home and what is in it (links inside are removed as links)."""
        p = Path(path)
        if self._remove_link(p):
            return True
        real = self.confine(p)
        if real == self.root:
            raise MgrError(f"refusing to delete the manager home {real}")
        if not real.exists():
            return False
        shutil.rmtree(real)
        return True

    def open_update(self, path: str | os.PathLike[str]) -> IO[bytes]:
        """An existing file under the home opened for in-place writes (``r+b``)."""
        return open(self.confine(path), "r+b")

    @contextlib.contextmanager
    def lock(self, path: str | os.PathLike[str], shared: bool = False) -> Iterator[None]:
        """An flock on a lock file under the home; the kernel drops it if the process dies."""
        real = self.confine(path)
        try:
            self.mkdir(real.parent)
            fd = os.open(real, os.O_RDWR | os.O_CREAT, 0o644)
        except (OSError, MgrError):
            if not read_only_folder(real.parent):
                raise
            if not shared:
                raise MgrError(
                    f"the home {self.root} is read-only: this command writes; commands that "
                    "only read (status, verify, versions, history, task list) work there"
                ) from None
            try:
                fd = os.open(real, os.O_RDONLY)  # flock needs no write access
            except OSError:
                # No lock file, and none can be made: no writer can work in this home either.
                yield
                return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
