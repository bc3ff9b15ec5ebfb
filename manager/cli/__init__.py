"""The ``mgr`` command line: ``main`` is the click group (console script and ``python -m manager``).

Command modules must not import torch or timm at module level: ``mgr --help`` and catalog
commands stay fast because heavy imports happen inside the commands that need them.
"""

from __future__ import annotations

from pathlib import Path

import click

from manager import __version__
from manager.cli.app import App
from manager.cli.group import MgrGroup
from manager.home import DEFAULT_HOME, Home
from manager.progress import Display, showing


@click.group(cls=MgrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="MGR_HOME",
    help=f"Manager home (catalog, backbones, artifacts). [env MGR_HOME; default {DEFAULT_HOME}]",
)
@click.version_option(__version__, prog_name="mgr")
@click.pass_context
def main(ctx: click.Context, home: Path | None) -> None:
    """mgr: one frozen ViT backbone, many tasks, mergeable Consolidator adapters."""
    ctx.obj = App(Home.resolve(home))
    ctx.call_on_close(ctx.obj.close)
    # Long work shows progress on stderr: bars on a terminal, plain lines in logs (commands with
    # --quiet or --json choose again).
    ctx.with_resource(showing(Display.for_stderr()))


def _register() -> None:
    from manager.cli import (
        budget,
        db,
        demo,
        export,
        gc,
        history,
        predict,
        promote,
        serve,
        status,
        storage,
        switch,
        tag,
        task,
        train,
        verify,
        versions,
    )

    for module in (task, train, versions, budget, storage, history, db, demo):
        main.add_command(module.command)
    for module in (switch, predict, serve, status, verify, gc, export):
        main.add_command(module.command)
    for command in (promote.promote, promote.rollback, tag.alias, tag.tag):
        main.add_command(command)


_register()

__all__ = ["App", "main"]
