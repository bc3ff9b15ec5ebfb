"""``mgr predict IMAGE...``: classify with the live model (the live files, merged weights)."""

from __future__ import annotations

from pathlib import Path

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import Int64, VersionRefType, device_option

# The predict command's default; kept here so `mgr --help` does not import PIL or torch.
DEFAULT_MAX_PIXELS = 40_000_000


@click.command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--task",
    "target",
    type=VersionRefType(),
    metavar="TASK[@VERSION|@ALIAS]",
    help="Switch the live files to this task (or version, or alias) first if another is live.",
)
@click.option("--top-k", type=Int64(1), default=5, show_default=True)
@device_option
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    help="Compute in this precision (the stored weights are unchanged). [default: bf16 on "
    "CUDA, fp32 on CPU]",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the model first (pays off for large batches; a one-off call waits for it).",
)
@click.option(
    "--max-pixels",
    type=Int64(1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images with more pixels than this (decompression bombs).",
)
@click.option(
    "--server",
    metavar="URL",
    help="Ask a running 'mgr serve' (e.g. http://127.0.0.1:8000) instead of loading the model; "
    "--task names the task without switching the live files.",
)
@click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    help="With --server: send the first key of this file as 'Authorization: Bearer' "
    "(default: MGR_API_KEY, if set).",
)
@json_option
@pass_app
def command(
    app: App,
    images: tuple[Path, ...],
    target: str | None,
    top_k: int,
    device: str,
    precision: str | None,
    compile_: bool,
    max_pixels: int,
    server: str | None,
    api_key_file: str | None,
    as_json: bool,
) -> None:
    """Classify IMAGE files: top classes and probabilities.

    With --task, the answer is that task's (its champion unless @VERSION/@ALIAS says otherwise),
    switching its backbone's live files first when they hold another version. Without it, the
    one task live answers; when several backbones each have a task live, predict refuses in one
    line naming them (pass --task).
    """
    if server is not None:
        from manager.serve.auth import load_keys
        from manager.serve.client import predict_files
        from manager.switch.predict import Prediction

        key = (load_keys(api_key_file) or [None])[0] if api_key_file else None
        answer = predict_files(server, [str(p) for p in images], target, top_k, api_key=key)
        task, version = answer["task"], answer["version"]
        results = [Prediction.from_dict(d) for d in answer["predictions"]]
    else:
        task, version, results = _local(
            app, images, target, top_k, device, precision, compile_, max_pixels
        )
    if as_json:
        predictions = [r.to_dict() for r in results]
        echo_json({"task": task, "version": version, "predictions": predictions})
        return
    click.echo(f"task {task}@{version}")
    for r in results:
        top = ", ".join(f"{t.name} {t.probability:.3f}" for t in r.top)
        click.echo(f"{r.image}: {top}")


def _local(
    app: App,
    images: tuple[Path, ...],
    target: str | None,
    top_k: int,
    device: str,
    precision: str | None,
    compile_: bool,
    max_pixels: int,
) -> tuple[str, int, list]:
    """The live files' model in this process: (task, version, predictions).

    ``target`` (TASK: its champion; TASK@V, TASK@ALIAS) is switched to on its own backbone if
    that backbone holds another version; without it, the one task live answers (several live
    backbones: one line naming them, exit 1). Never another task's answer.
    """
    from manager.catalog.deployment import find_deployment
    from manager.catalog.refs import resolve_version
    from manager.cli.switch import describe
    from manager.device import resolve_device
    from manager.names import parse_version_selector
    from manager.switch.live import switch_live
    from manager.switch.predict import load_live_model, predict_images, read_images

    # Every image is decoded first: a bad one must not switch the live files or load a model.
    decoded = read_images(images, max_pixels)
    backbone_id = version_id = None
    if target is not None:
        task, selector = parse_version_selector(target)
        with app.session(write=False) as s:
            ref = resolve_version(s, task, selector)  # TASK alone: its champion
            dep = find_deployment(s, app.home.host, ref.backbone_id)
            same = dep is not None and dep.version_id == ref.id and dep.state == "idle"
        if not same:
            report = switch_live(app.home, app.catalog, ref.task, ref.number)
            click.echo(describe(report), err=True)
        backbone_id, version_id = ref.backbone_id, ref.id
    model = load_live_model(
        app.home,
        app.catalog,
        str(resolve_device(device)),
        precision,
        compile_,
        backbone_id=backbone_id,
        version_id=version_id,
    )
    results = predict_images(model, decoded, [str(p) for p in images], top_k)
    return model.task, model.version, results
