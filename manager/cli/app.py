"""The object every command gets as ``ctx.obj``: the home and a lazily opened catalog."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy.orm import Session

from manager.catalog import Catalog, open_catalog
from manager.home import Home


class App:
    """Per-invocation state. The catalog is opened (and migrated) on first use only, so
    commands that never touch it (``--help``) create nothing."""

    def __init__(self, home: Home):
        self.home = home
        self._catalog: Catalog | None = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = open_catalog(self.home)
            # A switch killed half-way is finished (or rolled back) before anything else runs;
            # when the deployment is idle this costs one SELECT.
            from manager.switch.recovery import recover_if_needed

            recover_if_needed(
                self.home, self._catalog, warn=lambda m: click.echo(f"note: {m}", err=True)
            )
        return self._catalog

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        """One catalog transaction (see `Catalog.session`)."""
        with self.catalog.session(write=write) as s:
            yield s

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()


pass_app = click.make_pass_decorator(App)

json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def echo_json(obj: Any) -> None:
    """Print `obj` as JSON on stdout."""
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


def console(stderr: bool = False):  # rich is imported here so JSON-only commands skip it
    import os
    import sys

    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output has no terminal width; do not cut task names to rich's default 80 columns
    # (COLUMNS, where set, still wins: rich reads it).
    if stream.isatty() or os.environ.get("COLUMNS", "").isdigit():
        return Console(stderr=stderr)
    return Console(stderr=stderr, width=200)
