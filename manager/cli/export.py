"""``mgr export TASK[@VERSION] --out DIR``: the merged model as plain timm files, to leave mgr."""

from __future__ import annotations

from pathlib import Path

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import VersionRefType


@click.command("export")
@click.argument("target", type=VersionRefType(), metavar="TASK[@VERSION|@ALIAS]")
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder to write (created; an existing non-empty one needs --force).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Write into a non-empty --out folder: replaces the exported files, touches nothing else.",
)
@click.option(
    "--onnx", is_flag=True, help="Also write model.onnx (needs: pip install onnx onnxscript)."
)
@json_option
@pass_app
def command(app: App, target: str, out: Path, force: bool, onnx: bool, as_json: bool) -> None:
    """Write TASK's version (default: the active one) as a plain timm model into --out.

    The backbone with the version's delta merged in (the exact weights 'mgr predict' uses) and the
    task's head go to model.safetensors; config.json is timm's config (architecture, model_args,
    input size, mean/std, label names). Nothing of mgr is needed to load it.

    \b
    Examples:
      mgr export pets --out ./pets-timm
      mgr export pets@2 --out ./pets-v2 --onnx
      mgr export pets@champion --out ./pets-prod
    Then, in plain Python:
      import timm
      model = timm.create_model("local-dir:./pets-timm", pretrained=True).eval()
    """
    from manager.catalog.refs import version_number
    from manager.export.timm_export import export_version
    from manager.names import parse_version_selector
    from manager.units import format_size

    task, selector = parse_version_selector(target)
    with app.session(write=False) as s:  # an alias names a number now
        number = version_number(s, task, selector)
    report = export_version(app.home, app.catalog, task, number, out, force=force, onnx=onnx)
    if as_json:
        echo_json(report.to_dict())
        return
    files = ", ".join(f"{n} ({format_size(b)})" for n, b in report.files.items())
    click.echo(
        f"exported {report.task}@{report.version} ({report.method}) to {report.out}: {files}"
    )
    click.echo(f'load it with timm: timm.create_model("local-dir:{report.out}", pretrained=True)')
