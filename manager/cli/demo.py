"""``mgr demo``: the main job, end to end, as the commands a user would type.

It adapts the pretrained DeiT-tiny to Flowers-102 and Oxford-IIIT Pet with a Consolidator and with
the baselines under the same budget, switches, predicts, and ends with a side-by-side table. The
data and weights come from, in order: ``--assets DIR``; ``../shared/assets`` beside the checkout
(only when mgr runs from a checkout); a download into ``<home>/cache``; else the generated shapes
data set with a tiny random ViT (``--offline`` asks for that directly).
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from manager.cli.app import App, console, pass_app
from manager.cli.types import MAX_EPOCHS, Int64
from manager.errors import MgrError
from manager.registry.assets import FLOWERS, PETS, WEIGHTS, Source, choose_source
from manager.store.fs import Store

REAL_BACKBONE = "deit_tiny_patch16_224:img_size=112"
TINY_BACKBONE = "deit_tiny_patch16_224:img_size=32,depth=2"

# The real run, chosen by measurement (BENCHMARKS.md, "The demo"): within a task every method gets
# the same data, epochs, input size and one warm-up epoch, each at `mgr train`'s own defaults (no
# --lr: what a user gets). Pets (222 training images) gets more epochs than Flowers (1,020) so that
# both see enough optimizer steps; without the warm-up, 1e-2 diverges in the first steps.
REAL = """
task add flowers102 --dataset flowers102 --root {flowers} --backbone {bb} --weights {w}
task add pets --dataset pets --root {pets} --backbone {bb} --weights {w}
train flowers102 {fl} --eval-split val
train flowers102 --method linear {fl} --eval-split val --no-promote
train flowers102 --method bitfit {fl} --eval-split val --no-promote
train flowers102 --method lora {fl} --eval-split val --no-promote
train pets {pt}
train pets --method linear {pt} --no-promote
train pets --method bitfit {pt} --no-promote
train pets --method lora {pt} --no-promote
switch flowers102
predict {flowers}/jpg/image_06734.jpg --top-k 3
predict {pets}/images/Abyssinian_101.jpg --task pets --top-k 3
"""
OFFLINE = """
task add shapes --dataset synthetic --backbone {bb} --weights random
task add shapes4 --dataset synthetic:num_classes=4,seed=1 --backbone {bb} --weights random
train shapes --epochs {e} --lr 3e-3 --batch-size 32
train shapes --method linear --epochs {e} --lr 1e-2 --batch-size 32 --no-promote
train shapes4 --epochs {e} --lr 3e-3 --batch-size 32
train shapes4 --method linear --epochs {e} --lr 1e-2 --batch-size 32 --no-promote
switch shapes
predict {sample} --top-k 3
predict {sample} --task shapes4 --top-k 3
"""
TAIL = ["status", "task list", "storage"]
FLOWERS_EPOCHS, PETS_EPOCHS, OFFLINE_EPOCHS = 4, 8, 12


def _sample_image(store: Store) -> str:
    """A test image of the generated shapes data set, saved as a PNG to classify."""
    from manager.datasets import create_dataset

    path = store.confine(store.root / "demo" / "sample.png")
    image, _ = create_dataset("synthetic", None, "test")[0]
    with store.atomic(path) as tmp:
        image.save(tmp, format="PNG")
    return str(path)


def _plan(store: Store, source: Source, epochs: int | None) -> list[list[str]]:
    if source.data is not None:
        script = REAL.format(
            flowers=shlex.quote(str(source.data / FLOWERS)),
            pets=shlex.quote(str(source.data / PETS)),
            w=shlex.quote(str(source.weights)),
            bb=REAL_BACKBONE,
            fl=f"--epochs {epochs or FLOWERS_EPOCHS} --warmup-epochs 1",
            pt=f"--epochs {epochs or PETS_EPOCHS} --warmup-epochs 1",
        )
    else:
        script = OFFLINE.format(
            bb=TINY_BACKBONE, e=epochs or OFFLINE_EPOCHS, sample=shlex.quote(_sample_image(store))
        )
    return [shlex.split(line) for line in [*script.strip().splitlines(), *TAIL]]


METHOD_NAMES = {
    "consolidator": "Consolidator",
    "linear": "linear probe",
    "bitfit": "BitFit",
    "bitfit_ln": "BitFit + LN",
    "lora": "LoRA r=8",
    "full": "full fine-tuning",
}
LONGER = 'BENCHMARKS.md, "Consolidator defaults"'


def lead_note(task: str, scores: dict[str, float]) -> str | None:
    """One line where the Consolidator does not lead ``task`` (method name -> top-1), else None."""
    mine = scores.get("Consolidator")
    if mine is None:
        return None
    best, top = max(((m, v) for m, v in scores.items() if m != "Consolidator"),
                    key=lambda mv: mv[1], default=(None, -1.0))  # fmt: skip
    if best is None or mine > top:
        return None
    return (
        f"{task}: {best} {'ties' if top == mine else 'leads'} the Consolidator at this short "
        f"schedule ({top:.1f}% vs {mine:.1f}%); over seeds and longer schedules see {LONGER}."
    )


def _summary(app: App, before: dict[str, int], tasks: list[str], real: bool) -> None:
    """The side-by-side table of the versions this run trained, one row per task and method."""
    from rich.table import Table

    from manager.catalog import tasks as task_ops
    from manager.units import format_size

    table = Table(
        "task",
        "method",
        "top-1 %",
        "stored bytes",
        "% of backbone",
        "eval images",
        title="this run: each method with the same data, epochs and input size",
    )
    notes = []
    with app.session(write=False) as s:
        for name in tasks:
            scores: dict[str, float] = {}
            task = task_ops.get_task(s, name)
            # Bound at training: the materialised backbone's parameters, as float32 bytes.
            backbone = task.backbone.param_count * 4 if task.backbone is not None else None
            for v in task.versions:
                if v.number <= before.get(name, 0):
                    continue
                m = v.metrics or {}
                top1 = m.get("top1")
                if isinstance(top1, (int, float)):
                    label = METHOD_NAMES.get(v.method, v.method)
                    scores[label] = max(top1, scores.get(label, -1.0))
                table.add_row(
                    name,
                    METHOD_NAMES.get(v.method, v.method),
                    f"{top1:.1f}" if isinstance(top1, (int, float)) else "-",
                    f"{v.bytes:,} ({format_size(v.bytes)})",
                    f"{100 * v.bytes / backbone:.2f}%" if backbone else "-",
                    str(m.get("eval_images", "-")),
                )
            notes.append(lead_note(name, scores))
    click.echo()
    console().print(table)
    if real:
        for note in notes:
            if note:
                click.echo(note)
    else:
        click.echo(
            "The shapes run uses a random tiny ViT: it shows the workflow, not the method's "
            "accuracy; run the demo with the real assets for that."
        )


@click.command("demo")
@click.option(
    "--assets",
    type=click.Path(file_okay=False, path_type=Path),
    help=f"A folder with {WEIGHTS}, {FLOWERS}/ and {PETS}/. [default: ../shared/assets "
    "beside the checkout, if there]",
)
@click.option(
    "--download",
    is_flag=True,
    help="Skip local assets: download the real data and weights into <home>/cache.",
)
@click.option("--offline", is_flag=True, help="Use the generated shapes data set, no network.")
@click.option("--epochs", type=Int64(1, MAX_EPOCHS), help="Epochs per training run.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.png",
    help="Where the closing storage picture goes. [default: <home>/storage.png]",
)
@pass_app
def command(
    app: App,
    assets: Path | None,
    download: bool,
    offline: bool,
    epochs: int | None,
    plot: Path | None,
) -> None:
    """Run the main job: register tasks, train adapters and baselines, switch, predict, report.

    Every step is an ordinary mgr command, printed before it runs, so the demo doubles as a
    tutorial. Without the real data (and with no network) it falls back to generated shapes and
    says so. Tasks that already exist are reused; each run adds new adapter versions.
    """
    from manager.catalog import tasks as task_ops
    from manager.cli import main

    if sum([assets is not None, download, offline]) > 1:
        raise MgrError("--assets, --download and --offline exclude each other")
    store = Store.of(app.home.ensure())
    if plot is not None:
        store.user_path(plot, "the plot")  # refused now, not after an hour of training
    click.echo(f"mgr home: {app.home.root}")
    source = choose_source(store, assets, offline, download)
    click.echo(source.describe())
    with app.session(write=False) as s:
        before = {
            t.name: max((v.number for v in t.versions), default=0) for t in task_ops.list_tasks(s)
        }
    plan = _plan(store, source, epochs)
    trained: list[str] = []
    for args in plan:
        if args[:2] == ["task", "add"] and args[2] in before:
            continue
        if args[0] == "train" and args[1] not in trained:
            trained.append(args[1])
        click.secho(f"\n$ mgr {shlex.join(args)}", bold=True)
        rc = main.main(
            ["--home", str(app.home.root), *args], prog_name="mgr", standalone_mode=False
        )
        if rc not in (None, 0):
            raise SystemExit(rc)
    _summary(app, before, trained, real=source.data is not None)
    _picture(app, store, plot)


def _picture(app: App, store: Store, plot: Path | None) -> None:
    """The storage report as a picture (``mgr storage --plot``), where the demo says."""
    from manager.catalog.accounting import storage_report
    from manager.report.storage_plot import storage_png

    with app.session(write=False) as s:
        png = storage_png(storage_report(s, app.home).to_dict())
    if plot is None:
        where = store.confine(store.root / "storage.png")
        store.write_bytes(where, png)
    else:
        where = store.write_user_file(plot, png)
    click.echo(f"storage picture (bytes against top-1, budgets, full fine-tuning): {where}")
