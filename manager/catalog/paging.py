"""A page of tasks: a name glob, then ``limit`` rows after ``offset``, by name.

Every listing and report pages the same way, so ``mgr task list``, ``mgr storage`` and ``mgr budget
show`` with the same options show the same tasks. The page's ids come from one walk of the unique
name index; each report then joins what it needs onto those ids only, so its cost follows the rows
it prints, not the size of the catalog.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Select, select

from manager.catalog.models import Task
from manager.errors import BadInput
from manager.names import MAX_NAME_LEN

# What a name glob may hold: the name alphabet plus the two wildcards.
_PATTERN = re.compile(r"[a-z0-9_*?-]+")
_LIKE_ESCAPE = "\\"


def name_matches(pattern: str) -> ColumnElement[bool]:
    """``Task.name`` matching the glob `pattern` (``*``: any run, ``?``: one character).

    Translated to LIKE with every literal ``_``/``%``/escape escaped, so ``my_task`` matches
    itself only, on SQLite and PostgreSQL alike. Upper case is folded (names are lower case).
    """
    pattern = pattern.lower()
    if not _PATTERN.fullmatch(pattern) or len(pattern) > 4 * MAX_NAME_LEN:
        shown = pattern if len(pattern) <= 40 else pattern[:36] + "..."
        raise BadInput(
            f"bad task pattern {shown!r}: use name characters (a-z 0-9 - _) and the wildcards "
            "'*' (any run) and '?' (one character), e.g. 'pets*'"
        )
    like = "".join(
        "%" if c == "*" else "_" if c == "?" else _LIKE_ESCAPE + c if c in "%_\\" else c
        for c in pattern
    )
    return Task.name.like(like, escape=_LIKE_ESCAPE)


@dataclass(frozen=True)
class Page:
    """Which tasks a listing shows: those matching `pattern` (a glob; None: all), by name,
    `limit` of them (None: all) after skipping `offset`."""

    pattern: str | None = None
    limit: int | None = None
    offset: int = 0

    def where(self, q: Select) -> Select:
        """`q` restricted to the matching tasks (no paging)."""
        return q if self.pattern is None else q.where(name_matches(self.pattern))

    def ids(self) -> Select:
        """``SELECT id, name`` of this page's tasks, by name: one walk of the name index."""
        q = self.where(select(Task.id, Task.name)).order_by(Task.name)
        if self.limit is not None:
            q = q.limit(self.limit)
        return q.offset(self.offset) if self.offset else q
