"""The click group class: every MgrError and usage error becomes one ``error: ...`` line."""

from __future__ import annotations

import sys
from typing import Any

import click

from manager.errors import MgrError


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def error_line(exc: MgrError) -> str:
    """The CLI's one line for a library error, every kind alike: ``error: <message>``, then
    ``; <hint>`` when the raise site said what to type (a flag, a command).

    The library's message speaks the API; the hint is where the CLI's own words go, so
    ``str(exc)`` (and the server's answer) never names a flag.
    """
    line = f"error: {one_line(exc)}"
    hint = getattr(exc, "hint", None)
    return f"{line}; {one_line(hint)}" if hint else line


class MgrGroup(click.Group):
    """A click group that reports MgrError as one line (`error_line`) with exit code 1.

    Catching here, not in each command, covers every command added later too; subgroups made
    with ``@group.group()`` are MgrGroups as well.
    """

    group_class = type  # subgroups get this same class

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MgrError as exc:
            click.echo(error_line(exc), err=True)
            ctx.exit(1)
        except (OSError, RuntimeError) as exc:
            # A full disk where no caller named what it was writing: still one line.
            from manager.store.fs import is_no_space

            if not is_no_space(exc):
                raise
            where = getattr(exc, "filename", None)
            where = f" while writing {where}" if where else ""
            click.echo(f"error: no space left on device{where}; free space and rerun", err=True)
            ctx.exit(1)

    def main(  # type: ignore[override]
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        prog_name = prog_name or "mgr"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        # Run click non-standalone so its multi-line usage errors can be printed as one line.
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as exc:
            hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            click.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except MgrError as exc:  # raised outside invoke, e.g. in the group's own options
            click.echo(error_line(exc), err=True)
            sys.exit(1)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(1)
        # Non-standalone click returns the exit code of ctx.exit(), else the callback's value.
        sys.exit(rv if isinstance(rv, int) else 0)
