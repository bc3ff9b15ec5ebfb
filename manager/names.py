"""Task names: checked before anything else because they become folder names."""

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
        raise MgrError(
            f"bad task name {name!r}: use lower-case letters, digits, '-' and '_', "
            f"starting with a letter or digit, at most {MAX_NAME_LEN} characters"
        )
    return name
