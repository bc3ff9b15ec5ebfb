"""Task names and ``TASK[@VERSION|@ALIAS]`` references: checked before anything else, because
names become folder names and versions become SQLite integers."""

from __future__ import annotations

import re

from manager.errors import BadInput

MAX_NAME_LEN = 64
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def validate_task_name(name: str) -> str:
    """Return `name` if it is a valid task name, else raise BadInput.

    Lower-case letters, digits, '-' and '_', starting with a letter or digit, at most 64
    characters: safe as a path component on every filesystem, and never '.', '..' or hidden.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > MAX_NAME_LEN:
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:76] + "..."
        raise BadInput(
            f"bad task name {shown!r}: use lower-case letters, digits, '-' and '_', "
            f"starting with a letter or digit, at most {MAX_NAME_LEN} characters"
        )
    return name


MAX_VERSION = 2**63 - 1  # version numbers are SQLite INTEGERs
_VERSION = re.compile(r"[vV]?([0-9]+)")


def parse_version_ref(text: str) -> tuple[str, int | None]:
    """``"pets"`` -> ``("pets", None)``; ``"pets@3"`` (or ``pets@v3``) -> ``("pets", 3)``.

    The version is ASCII digits only (``str.isdigit`` would also take "²"), 1..2**63-1.
    Numbers only; `parse_version_selector` also takes alias names.
    """
    name, sep, ver = str(text).partition("@")
    validate_task_name(name)
    if not sep:
        return name, None
    return name, parse_version_number(ver, name)


def parse_version_number(ver: str, task: str = "pets") -> int:
    """``"3"`` or ``"v3"`` -> 3, in 1..2**63-1; else BadInput (``task`` shapes the example)."""
    m = _VERSION.fullmatch(ver)
    digits = m.group(1).lstrip("0") if m else ""
    # Length first: int() of thousands of digits is slow, and refused past 4300 of them.
    if not digits or len(digits) > len(str(MAX_VERSION)) or int(digits) > MAX_VERSION:
        shown = ver if len(ver) <= 24 else ver[:20] + "..."
        raise BadInput(
            f"bad version {shown!r} in TASK@VERSION: use a number 1..{MAX_VERSION}, e.g. {task}@2"
        )
    return int(digits)


# The champion is the task's active version: an alias every task has, never stored.
CHAMPION = "champion"
Selector = int | str | None  # a version number, an alias name, or None (the champion)


_ALIAS = re.compile(r"[a-z][a-z0-9_-]*")


def _alias_problem(name: str) -> str | None:
    if not isinstance(name, str) or not _ALIAS.fullmatch(name) or len(name) > MAX_NAME_LEN:
        return (
            "use lower-case letters, digits, '-' and '_', starting with a letter, "
            f"at most {MAX_NAME_LEN} characters"
        )
    if _VERSION.fullmatch(name):
        return "a number (or v<number>) names a version, not an alias"
    return None


def validate_alias_name(name: str, *, settable: bool = True) -> str:
    """Return `name` if it can name an alias (``settable``: not the reserved ``champion``).

    Like a task name but starting with a letter, and never ``v<digits>``: after the ``@`` a
    number always means a version.
    """
    problem, hint = _alias_problem(name), None
    if problem is None and settable and name == CHAMPION:
        problem = f"{CHAMPION!r} is the task's active version: promote a version instead"
        hint = "use 'mgr promote TASK@VERSION'"
    if problem is not None:
        shown = name if not isinstance(name, str) or len(name) <= 80 else name[:76] + "..."
        raise BadInput(f"bad alias name {shown!r}: {problem}", hint=hint)
    return name


def parse_selector(text: str, task: str = "pets") -> int | str:
    """``"3"`` / ``"v3"`` -> 3; ``"candidate"`` -> ``"candidate"`` (a checked alias name)."""
    ver = str(text)
    if ver[:1].isdigit() or (ver[:1] in ("v", "V") and ver[1:2].isdigit()):
        return parse_version_number(ver, task)
    problem = _alias_problem(ver)
    if problem is not None:
        shown = ver if len(ver) <= 24 else ver[:20] + "..."
        raise BadInput(
            f"bad version or alias {shown!r}: use a number 1..{MAX_VERSION} or an alias name, "
            f"e.g. {task}@2 or {task}@{CHAMPION}"
        )
    return ver


def parse_version_selector(text: str) -> tuple[str, Selector]:
    """``"pets"`` -> ``("pets", None)``; ``"pets@3"`` -> ``("pets", 3)``;
    ``"pets@candidate"`` -> ``("pets", "candidate")``. ``pets@champion`` stays the string
    ``"champion"`` (the catalog resolves it to the active version)."""
    name, sep, ver = str(text).partition("@")
    validate_task_name(name)
    if not sep:
        return name, None
    return name, parse_selector(ver, name)
