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

REAL = """
task add flowers102 --dataset flowers102 --root {a}/flowers-102 --backbone {bb} --weights {w}
task add pets --dataset pets --root {a}/oxford-iiit-pet --backbone {bb} --weights {w}
train flowers102 --epochs {e} --lr 3e-3 --eval-split val
train pets --epochs {e} --lr 3e-3
train pets --method linear --epochs {e} --lr 1e-2 --no-promote
switch flowers102
predict {a}/flowers-102/jpg/image_06734.jpg --top-k 3
predict {a}/oxford-iiit-pet/images/Abyssinian_101.jpg --task pets --top-k 3
"""
OFFLINE = """
task add shapes --dataset synthetic --backbone {bb} --weights random
task add shapes4 --dataset synthetic:num_classes=4,seed=1 --backbone {bb} --weights random
train shapes --epochs {e} --lr 3e-3 --batch-size 32
train shapes4 --epochs {e} --lr 3e-3 --batch-size 32
train shapes4 --method linear --epochs {e} --lr 1e-2 --batch-size 32 --no-promote
switch shapes
predict {sample} --top-k 3
predict {sample} --task shapes4 --top-k 3
"""
TAIL = ["status", "task list", "storage"]


def _sample_image(home: Path) -> str:
    """A test image of the generated shapes data set, saved as a PNG to classify."""
    from manager.datasets import create_dataset

    path = home / "demo" / "sample.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    image, _ = create_dataset("synthetic", None, "test")[0]
    image.save(path)
    return str(path)


def _plan(home: Path, assets: Path | None, epochs: int | None) -> list[list[str]]:
    if assets is not None:
        script = REAL.format(
            a=shlex.quote(str(assets)),
            w=shlex.quote(str(assets / WEIGHTS)),
            bb="deit_tiny_patch16_224:img_size=112",
            e=epochs or 4,
        )
    else:
        script = OFFLINE.format(
            bb="deit_tiny_patch16_224:img_size=32,depth=2",
            e=epochs or 12,
            sample=shlex.quote(_sample_image(home)),
        )
    return [shlex.split(line) for line in [*script.strip().splitlines(), *TAIL]]


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
    """Run the main job: register tasks, train adapters, switch, predict, report storage.

    Every step is an ordinary mgr command, printed before it runs, so the demo doubles as a
    tutorial. Tasks that already exist are reused; each run adds new adapter versions.
    """
    from manager.catalog import tasks as task_ops
    from manager.cli import main

    if offline:
        assets = None
    elif assets is None and (ASSETS / WEIGHTS).is_file():
        assets = ASSETS
    what = f"real assets in {assets}" if assets else "offline: generated shapes, tiny random ViT"
    click.echo(f"mgr home: {app.home.root} ({what})")
    with app.session(write=False) as s:
        existing = {t.name for t in task_ops.list_tasks(s)}
    for args in _plan(app.home.root, assets, epochs):
        if args[:2] == ["task", "add"] and args[2] in existing:
            continue
        click.secho(f"\n$ mgr {shlex.join(args)}", bold=True)
        rc = main.main(
            ["--home", str(app.home.root), *args], prog_name="mgr", standalone_mode=False
        )
        if rc not in (None, 0):
            raise SystemExit(rc)
