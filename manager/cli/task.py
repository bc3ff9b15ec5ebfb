"""``mgr task``: register, list, show and remove tasks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from manager.arch import check_weights_header
from manager.catalog import tasks as task_ops
from manager.catalog.models import VERSION_DELETED
from manager.catalog.paramcount import param_info
from manager.catalog.views import iter_task_rows, task_dict, task_rows
from manager.cli.app import App, console, echo_json, json_option, pass_app
from manager.cli.jsonout import echo_json_stream
from manager.cli.paging import footer, make_page, page_options
from manager.cli.types import BackboneSpec, DatasetSpec, Int64, Size
from manager.errors import MgrError
from manager.names import validate_task_name
from manager.specs import format_spec, split_spec
from manager.store.fs import Store
from manager.units import format_size, parse_size

RANDOM_WEIGHTS = "random"


@click.group("task")
def command() -> None:
    """Register, inspect and remove tasks."""


def _weights(value: str | None) -> str | None:
    """None (the hub's pretrained weights), "random", or an existing local file (absolute)."""
    if value is None or value == RANDOM_WEIGHTS:
        return value
    from manager.store.fs import not_regular

    path = Path(value).expanduser()
    kind = not_regular(path)
    if kind is not None:
        raise MgrError(f"weights {value!r} is {kind}, not a regular file")
    if not path.is_file():
        raise MgrError(f"weights file {value!r} not found (use a file path or 'random')")
    return str(path.resolve())


def _describe(dataset: str, root: Path | None) -> tuple[list[str], str | None]:
    from manager.datasets.registry import describe  # light: definitions and folders, no torch

    class_names, found = describe(dataset, root)
    where = found if found is not None else root
    return list(class_names), (str(Path(where).expanduser().resolve()) if where else None)


@command.command("add")
@click.argument("name")
@click.option(
    "--dataset",
    required=True,
    type=DatasetSpec(),
    help="flowers102, pets, vtab1k, imagefolder, synthetic; NAME[:key=value,...].",
)
@click.option("--root", type=click.Path(path_type=Path), help="Where the data set is (or goes).")
@click.option(
    "--backbone",
    type=BackboneSpec(),
    default=task_ops.DEFAULT_BACKBONE,
    show_default=True,
    help="timm model, optionally with arguments: NAME[:key=value,...].",
)
@click.option(
    "--weights",
    help="Backbone weights: a local file, or 'random'. [default: hub] A .safetensors file's "
    "tensor names and shapes are checked against the backbone here (header only).",
)
@click.option(
    "--img-size",
    type=Int64(16, 8192),
    help="Input size of the task (recorded in its backbone spec as img_size=N; every version "
    "is trained and served at it). [default: the backbone's own]",
)
@click.option(
    "--budget", type=Size(), help="Storage budget for the task's adapter versions, e.g. 300KB."
)
@json_option
@pass_app
def add(
    app: App,
    name: str,
    dataset: str,
    root: Path | None,
    backbone: str,
    weights: str | None,
    img_size: int | None,
    budget: str | None,
    as_json: bool,
) -> None:
    """Register task NAME; its classes come from the data set.

    \b
    The input size is the task's: --img-size N records it in the backbone spec
    (e.g. deit_tiny_patch16_224:img_size=112), and 'mgr task show' prints it.
    """
    # Cheap checks first, so a bad command touches nothing.
    validate_task_name(name)
    budget_bytes = parse_size(budget) if budget is not None else None
    spec_name, spec_kwargs = split_spec(backbone)
    if img_size is not None:
        given = spec_kwargs.get("img_size")
        if given is not None and given != img_size:
            raise MgrError(
                f"--img-size {img_size} contradicts the backbone's img_size={given}; give one"
            )
        backbone = format_spec(spec_name, {**spec_kwargs, "img_size": img_size})
    weights = _weights(weights)
    with app.session(write=False) as s:
        if task_ops.find_task(s, name) is not None:
            raise MgrError(f"task {name!r} already exists")
    class_names, data_root = _describe(dataset, root)

    store = Store.of(app.home)
    if weights is not None and weights != RANDOM_WEIGHTS:
        check_weights_header(Path(weights), backbone, store)  # the header: no tensor read
    param_info(backbone, store)  # timm must build the spec: once per home (the default ships)
    with app.session() as s:
        task = task_ops.add_task(
            s,
            name=name,
            dataset=dataset,
            class_names=class_names,
            data_root=data_root,
            backbone_spec=backbone,
            weights=weights,
            budget_bytes=budget_bytes,
        )
        out = task_dict(s, task, full=True)
    if as_json:
        echo_json(out)
    else:
        click.echo(
            f"added task {name!r}: {dataset}, {task.num_classes} classes, backbone {backbone}"
            + (f", budget {format_size(budget_bytes)}" if budget_bytes is not None else "")
        )


@command.command("list")
@page_options("tasks")
@json_option
@pass_app
def list_(app: App, pattern: str | None, limit: int | None, offset: int, as_json: bool) -> None:
    """List tasks, by name: versions, active version, bytes used and budget.

    \b
    mgr task list                         the first 100 tasks
    mgr task list --offset 100            the next 100
    mgr task list --task 'pets*' --json   every task whose name starts with "pets"
    """
    page = make_page(pattern, limit, offset, as_json)
    if as_json:  # streamed: each task written as its row arrives
        with app.session(write=False) as s:
            echo_json_stream(iter_task_rows(s, page))
        return
    with app.session(write=False) as s:
        rows = task_rows(s, page)
        total = task_ops.count_tasks(s, pattern)
    if not rows:
        if total:
            click.echo(f"no tasks on this page ({total:,} in all; --offset {offset} is past them)")
        elif pattern is not None:
            click.echo(f"no task matches {pattern!r}")
        else:
            click.echo("no tasks (add one with 'mgr task add NAME --dataset ...')")
        return
    from rich.table import Table

    table = Table("task", "data set", "classes", "backbone", "versions", "active", "used", "budget")
    for r in rows:
        table.add_row(
            r["name"],
            r["dataset"],
            str(r["num_classes"]),
            r["backbone_spec"],
            str(r["versions"]),
            f"v{r['active_version']}" if r["active_version"] else "-",
            format_size(r["used_bytes"]),
            format_size(r["budget_bytes"]),
        )
    console().print(table)
    more = footer(page, len(rows), total or 0, "tasks")
    if more:
        click.echo(more)


@command.command("show")
@click.argument("name")
@json_option
@pass_app
def show(app: App, name: str, as_json: bool) -> None:
    """Show a task, its budget and its adapter versions."""
    with app.session(write=False) as s:
        out = task_dict(s, task_ops.get_task(s, name), full=True)
    if as_json:
        echo_json(out)
        return
    from rich.table import Table

    names = out["class_names"]
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    budget = format_size(out["budget_bytes"]) if out["budget_bytes"] is not None else "none"
    click.echo(f"task      {out['name']}")
    click.echo(
        f"data set  {out['dataset']}" + (f"  ({out['data_root']})" if out["data_root"] else "")
    )
    click.echo(f"classes   {out['num_classes']}: {shown}")
    click.echo(f"backbone  {out['backbone_spec']}  weights: {out['weights'] or 'hub'}")
    bound = out.get("bound_backbone")
    if bound is not None:  # what every version is trained on and served with, input size included
        click.echo(f"bound to  {bound['spec']} (weights {bound['content_hash'][:12]})")
    click.echo(f"budget    {budget}, used {format_size(out['used_bytes'])}")
    active = out["active_version"]
    click.echo(f"active    {f'v{active}' if active else '-'}")
    if not out["versions"]:
        click.echo("versions  none (train one with 'mgr train NAME')")
        return
    table = Table("version", "method", "status", "bytes", "created")
    for v in out["versions"]:
        mark = " *" if v["number"] == active else ""
        size = format_size(v["bytes"]) if v["status"] != VERSION_DELETED else "-"
        table.add_row(f"v{v['number']}{mark}", v["method"], v["status"], size, v["created_at"])
    console().print(table)


@command.command("remove")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Remove even if the task is live in the deployment.")
@pass_app
def remove(app: App, name: str, yes: bool, force: bool) -> None:
    """Remove a task, its adapter versions, budget and artifact files."""
    validate_task_name(name)
    if not yes:
        if not sys.stdin.isatty():
            raise MgrError(f"removing task {name!r} needs confirmation: add --yes")
        click.confirm(f"remove task {name!r} and all its adapter versions?", abort=True)
    from manager.registry.removal import check_owner, remove_task

    check_owner(app.catalog, name)
    # Without --force, remove_task refuses a live task in the transaction that would delete it.
    warnings = _remove_forced(app, name) if force else remove_task(app.catalog, name)
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"removed task {name!r}")


def _remove_forced(app: App, name: str) -> list[str]:
    """Remove a task that may be live: the live files go back to the backbone alone first.

    The live lock is held from the check to the commit, so no switch to the task can start in
    between, and the catalog never says "backbone alone" while the live files hold its delta.
    """
    from manager.cli.switch import describe
    from manager.registry.removal import remove_task
    from manager.store.fs import Store
    from manager.switch.live import clear_task_locked

    store = Store.of(app.home)
    with store.lock(store.live_lock_file):
        with app.session(write=False) as s:
            task = task_ops.get_task(s, name)
            live = task_ops.is_live(s, task, app.home.host)
        if live:
            try:
                reports = clear_task_locked(store, app.catalog, task.id)
            except MgrError as exc:
                raise MgrError(
                    f"task {name!r} is live and the live files could not be restored to the "
                    f"backbone alone ({exc}); nothing was removed"
                ) from None
            for report in reports:
                click.echo(describe(report))
        return remove_task(app.catalog, name, force=True)


# `mgr task refresh` (issue 21) lives in its own module.
from manager.cli.refresh import refresh  # noqa: E402

command.add_command(refresh)
