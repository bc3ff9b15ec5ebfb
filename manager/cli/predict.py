"""``mgr predict IMAGE...``: classify with the live model (the live files, merged weights)."""

from __future__ import annotations

from pathlib import Path

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import Int64, VersionRefType, device_option


@click.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--task",
    "target",
    type=VersionRefType(),
    metavar="TASK[@VERSION]",
    help="Switch the live files to this task first if another one is live.",
)
@click.option("--top-k", type=Int64(1), default=5, show_default=True)
@device_option
@json_option
@pass_app
def command(
    app: App, images: tuple[Path, ...], target: str | None, top_k: int, device: str, as_json: bool
) -> None:
    """Classify IMAGE files with the live task: top classes and probabilities."""
    from manager.catalog.deployment import get_deployment
    from manager.cli.switch import describe
    from manager.switch.artifacts import parse_target
    from manager.switch.live import switch_live
    from manager.switch.serve import load_live_model, predict_files, resolve_device

    if target is not None:
        task, number = parse_target(target)
        with app.session(write=False) as s:
            live = get_deployment(s).version
            same = live is not None and live.task.name == task
            same = same and (number is None or live.number == number)
        if not same:
            report = switch_live(app.home, app.catalog, task, number)
            click.echo(describe(report), err=True)
    model = load_live_model(app.home, app.catalog, str(resolve_device(device)))
    results = predict_files(model, list(images), top_k)
    if as_json:
        echo_json({"task": model.task, "version": model.version, "predictions": results})
        return
    click.echo(f"task {model.task}@{model.version}")
    for r in results:
        top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
        click.echo(f"{r['image']}: {top}")
