"""``mgr demo``: the main job, end to end, as the commands a user would type.

With the real assets beside the checkout (``../shared/assets``, or ``--assets``), it adapts the
pretrained DeiT-tiny to Flowers-102 and Oxford-IIIT Pet; offline without them, it uses the generated
shapes data set and a tiny random ViT. Either way it finishes in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from manager.cli.app import App, pass_app

ASSETS = Path(__file__).resolve().parents[2].parent / "shared" / "assets"
WEIGHTS = "deit_tiny_patch16_224.safetensors"


def _plan(assets: Path | None, epochs: int | None) -> list[list[str]]:
    if assets is not None:
        w, bb = str(assets / WEIGHTS), "deit_tiny_patch16_224:img_size=112"
        e = str(epochs or 4)
        return [
            [
                "task",
                "add",
                "flowers102",
                "--dataset",
                "flowers102",
                "--root",
                str(assets / "flowers-102"),
                "--backbone",
                bb,
                "--weights",
                w,
            ],
            [
                "task",
                "add",
                "pets",
                "--dataset",
                "pets",
                "--root",
                str(assets / "oxford-iiit-pet"),
                "--backbone",
                bb,
                "--weights",
                w,
            ],
            ["train", "flowers102", "--epochs", e, "--lr", "2e-3", "--eval-split", "val"],
            ["train", "pets", "--epochs", e, "--lr", "2e-3"],
            ["train", "pets", "--method", "linear", "--epochs", e, "--lr", "3e-3", "--no-promote"],
        ]
    tiny, e = "deit_tiny_patch16_224:img_size=32,depth=2", str(epochs or 12)
    return [
        [
            "task",
            "add",
            "shapes",
            "--dataset",
            "synthetic",
            "--backbone",
            tiny,
            "--weights",
            "random",
        ],
        [
            "task",
            "add",
            "shapes4",
            "--dataset",
            "synthetic:num_classes=4,seed=1",
            "--backbone",
            tiny,
            "--weights",
            "random",
        ],
        ["train", "shapes", "--epochs", e, "--lr", "3e-3", "--batch-size", "32"],
        ["train", "shapes4", "--epochs", e, "--lr", "3e-3", "--batch-size", "32"],
        [
            "train",
            "shapes4",
            "--method",
            "linear",
            "--epochs",
            e,
            "--lr",
            "1e-2",
            "--batch-size",
            "32",
            "--no-promote",
        ],
    ]


@click.command("demo")
@click.option(
    "--assets",
    type=click.Path(file_okay=False, path_type=Path),
    help=f"Real data and weights. [default: {ASSETS} if present, else offline data]",
)
@click.option("--offline", is_flag=True, help="Use the generated data set even if assets exist.")
@click.option("--epochs", type=click.IntRange(1), help="Epochs per training run.")
@pass_app
def command(app: App, assets: Path | None, offline: bool, epochs: int | None) -> None:
    """Run the main job: register tasks, train adapters, report storage.

    Every step is an ordinary mgr command, printed before it runs, so the demo doubles as a
    tutorial. Tasks that already exist are reused; each run adds new adapter versions.
    """
    from manager.catalog import tasks as task_ops
    from manager.cli import main

    if assets is None and not offline and (ASSETS / WEIGHTS).is_file():
        assets = ASSETS
    if offline:
        assets = None
    what = f"real assets in {assets}" if assets else "offline: generated shapes, tiny random ViT"
    click.echo(f"mgr home: {app.home.root} ({what})")
    with app.session(write=False) as s:
        existing = {t.name for t in task_ops.list_tasks(s)}
    steps = [
        a for a in _plan(assets, epochs) if not (a[:2] == ["task", "add"] and a[2] in existing)
    ]
    steps += [["task", "list"], ["storage"]]
    env_home = ["--home", str(app.home.root)]
    for args in steps:
        click.secho(f"\n$ mgr {shlex.join(args)}", bold=True)
        rc = main.main(env_home + args, prog_name="mgr", standalone_mode=False)
        if rc not in (None, 0):
            raise SystemExit(rc)
