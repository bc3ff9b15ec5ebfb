"""``--limit``, ``--offset`` and ``--task`` for the listings, and the footer of a cut-off page.

As ``sqlite-utils rows``, ``--json`` prints every row unless ``--limit`` says otherwise, so a
script never loses rows silently; the human table stops at a page (datasette's default page
size, 100 rows) and says how to see the rest. ``--limit 0`` means no limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from manager.catalog.paging import Page
from manager.cli.types import Int64

DEFAULT_PAGE = 100


def page_options(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--task PATTERN``, ``--limit N``, ``--offset N`` on a listing of `what` (plural noun)."""

    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option(
            "--offset",
            type=Int64(0),
            default=0,
            help=f"Skip the first N {what} (by task name); with --limit, the next page.",
        )(f)
        f = click.option(
            "--limit",
            type=Int64(0),
            help=f"Show at most N {what}; 0: all. [default: {DEFAULT_PAGE} in the table, "
            "all with --json]",
        )(f)
        return click.option(
            "--task",
            "pattern",
            metavar="PATTERN",
            help="Only tasks whose name matches the glob PATTERN ('*': any run, '?': one "
            "character), e.g. --task 'pets*'.",
        )(f)

    return decorate


def make_page(pattern: str | None, limit: int | None, offset: int, as_json: bool) -> Page:
    """The page the options ask for (the default limit applies to the table only)."""
    if limit is None and not as_json:
        limit = DEFAULT_PAGE
    page = Page(pattern=pattern, limit=limit or None, offset=offset)
    page.ids()  # a bad pattern fails here, before a streamed listing prints its first line
    return page


def footer(page: Page, shown: int, total: int, what: str) -> str | None:
    """One line saying how many rows the page left out and how to see them; None if none."""
    after = total - page.offset - shown
    if after <= 0 or page.limit is None:
        return None
    return (
        f"... {after:,} more {what} of {total:,}: --offset {page.offset + shown} for the next "
        "page, --limit 0 for all"
    )
