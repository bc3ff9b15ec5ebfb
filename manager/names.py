"""Task names and ``TASK[@VERSION]`` references: checked before anything else, because names
become folder names and versions become SQLite integers."""

from __future__ import annotations

import re

from manager.errors import MgrError

MAX_NAME_LEN = 64
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def validate_task_name(name: str) -> str:
    """Return `name` if it is a valid task name, else raise MgrError.

    Lower-case letters, digits, '-' and '_', starting with a letter or digit, at most 64
    characters: safe as a path component on every filesystem, and never '.', '..' or hidden.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LEN:
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:76] + "..."
        raise MgrError(
            f"bad task name {shown!r}: use lower-case letters, digits, '-' and '_', "
            f"starting with a letter or digit, at most {MAX_NAME_LEN} characters"
        )
    return name


MAX_VERSION = 2**63 - 1  # version numbers are SQLite INTEGERs
_VERSION = re.compile(r"[vV]?([0-9]+)")


def parse_version_ref(text: str) -> tuple[str, int | None]:
    """``"pets"`` -> ``("pets", None)``; ``"pets@3"`` (or ``pets@v3``) -> ``("pets", 3)``.

    The version is ASCII digits only (``str.isdigit`` would also take "²"), 1..2**63-1.
    """
    name, sep, ver = str(text).partition("@")
    validate_task_name(name)
    if not sep:
        return name, None
    m = _VERSION.fullmatch(ver)
    digits = m.group(1).lstrip("0") if m else ""
    # Length first: int() of thousands of digits is slow, and refused past 4300 of them.
    if not digits or len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        shown = ver if len(ver) <= 24 else ver[:20] + "..."
        raise MgrError(
            f"bad version {shown!r} in TASK@VERSION: use a number 1..{MAX_VERSION}, e.g. {name}@2"
        )
    return name, int(digits)
