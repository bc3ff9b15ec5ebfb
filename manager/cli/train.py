"""``mgr train TASK``: train an adapter, consolidate it, record a new version."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from manager.catalog import tasks as task_ops
from manager.cli.app import App, console, echo_json, json_option, pass_app
from manager.cli.types import MAX_EPOCHS, SEED, FiniteFloat, Groups, Int64, Size, device_option
from manager.errors import MgrError
from manager.store.fs import Store
from manager.train.config import TrainConfig
from manager.units import format_size, parse_size

if TYPE_CHECKING:
    from manager.train.loop import EpochEvent, StepEvent

METHOD_CHOICES = ("consolidator", "linear", "bitfit", "bitfit_ln", "lora", "full")


@click.command("train")
@click.argument("task")
@click.option(
    "--method",
    type=click.Choice(METHOD_CHOICES),
    default=TrainConfig.method,
    show_default=True,
    help="Consolidator, or a baseline trained the same way.",
)
@click.option(
    "--groups",
    type=Groups(),
    default=TrainConfig.groups,
    help="Consolidator branches: g per branch, e.g. '384' or '384,192'; a trailing 's' "
    "reorders that branch's input channels ('96,96s'). [default: two input "
    "channels per group: 384 on ViT-B, 96 on DeiT-tiny]",
)
@click.option("--shuffle", is_flag=True, help="Reorder the input channels of every branch.")
@click.option(
    "--drop-path",
    type=FiniteFloat(0, 1, max_open=True),
    default=TrainConfig.drop_path,
    show_default=True,
    help="DropPath on each branch's output. 0 by default: measured on DeiT-tiny with "
    "Flowers-102 and Pets (5 epochs, 3 seeds), 0 and 0.5 tie and 0 trains ~25% faster. "
    "For long schedules try 0.2-0.8 (the paper used 0.8 on Flowers and Pets at 100 epochs).",
)
@click.option(
    "--lora-rank",
    type=Int64(1, 4096),
    default=TrainConfig.lora_rank,
    show_default=True,
    help="Rank of the LoRA baseline.",
)
@click.option(
    "--budget", type=Size(), help="Refuse (or with --fit-budget, fit) above this size, e.g. 300KB."
)
@click.option(
    "--fit-budget", is_flag=True, help="Pick the finest one-branch structure that fits the budgets."
)
@click.option("--epochs", type=Int64(1, MAX_EPOCHS), default=TrainConfig.epochs, show_default=True)
@click.option(
    "--warmup-epochs",
    type=Int64(0, MAX_EPOCHS),
    default=TrainConfig.warmup_epochs,
    help="[default: 10% of --epochs]",
)
@click.option(
    "--lr",
    type=FiniteFloat(0, min_open=True),
    default=TrainConfig.lr,
    help="Peak learning rate. [default: 1e-3; 1e-4 for full fine-tuning]",
)
@click.option(
    "--weight-decay",
    type=FiniteFloat(0),
    default=TrainConfig.weight_decay,
    show_default=True,
    help="AdamW weight decay (never on biases and norms).",
)
@click.option(
    "--batch-size",
    type=Int64(1, 65536),
    default=TrainConfig.batch_size,
    show_default=True,
    help="Global batch (under torchrun, shared out among the processes). The learning rate is "
    "never scaled with it: pass the --lr you want for that batch.",
)
@click.option(
    "--img-size",
    type=Int64(16, 8192),
    default=TrainConfig.img_size,
    help="Input size (bicubic resize). [default: the backbone's own]",
)
@click.option("--seed", type=SEED, default=TrainConfig.seed, show_default=True)
@click.option(
    "--dtype",
    "storage_dtype",
    type=click.Choice(["float32", "float16", "bfloat16"]),
    default=TrainConfig.storage_dtype,
    show_default=True,
    help="Storage dtype of the artifact.",
)
@device_option
# -- compute settings (issue 11): precision, compile --
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16", "fp16"]),
    default=TrainConfig.precision,
    help="Autocast precision of the forward and backward (fp16 scales the loss); parameters, "
    "optimizer state and the artifact keep their dtypes. [default: bf16 on CUDA, fp32 on CPU]",
)
@click.option(
    "--compile",
    "compile_",
    is_flag=True,
    help="torch.compile the model for training (the first step waits; pays off on long runs).",
)
@click.option("--train-split", help="[default: the official training split: train, or trainval]")
@click.option(
    "--eval-split",
    default="test",
    show_default=True,
    help="Split the reported accuracy is measured on.",
)
@click.option("--resume", is_flag=True, help="Continue from the task's last epoch checkpoint.")
@click.option(
    "--no-promote",
    is_flag=True,
    help="Keep the task's active version; do not make the new one active.",
)
@json_option
@pass_app
def command(
    app: App,
    task: str,
    method: str,
    groups: str,
    shuffle: bool,
    drop_path: float,
    lora_rank: int,
    budget: str | None,
    fit_budget: bool,
    epochs: int,
    warmup_epochs: int | None,
    lr: float | None,
    weight_decay: float,
    batch_size: int,
    img_size: int | None,
    seed: int,
    storage_dtype: str,
    device: str,
    precision: str | None,
    compile_: bool,
    resume: bool,
    train_split: str | None,
    eval_split: str,
    no_promote: bool,
    as_json: bool,
) -> None:
    """Train TASK's adapter, consolidate it and record a new adapter version.

    The paper's recipe by default: AdamW, batch 64, 100 epochs, cosine schedule with 10%
    warm-up, no weight decay on biases and norms, bicubic resize, no augmentation. The
    projected artifact size is checked against the task's and the global budget before any
    training. Each epoch leaves a checkpoint; after a kill, rerun with --resume. Under
    torchrun, each process trains its share of every --batch-size batch and rank 0 records.

    \b
    Examples:
      mgr train flowers102 --epochs 20
      mgr train pets --groups 96,96s --drop-path 0.5
      mgr train pets --method lora --lr 3e-3
      mgr train pets --method full --batch-size 256 --lr 4e-4 --compile
      torchrun --standalone --nproc-per-node 4 -m manager train pets --batch-size 256
    """
    # Cheap checks before the heavy imports, so a typo fails in a fraction of a second.
    budget_bytes = parse_size(budget) if budget is not None else None
    with app.session(write=False) as s:
        task_ops.get_task(s, task)
    # Linked artifacts/<task> or runs/<task> folders that lead outside the home are refused here.
    store = Store.of(app.home)
    store.task_dir(task)
    if resume and not store.checkpoint(task).is_file():
        raise MgrError(f"nothing to resume: no checkpoint of an interrupted run of {task!r}")

    from manager.delta.structure import format_structure
    from manager.train.config import TrainConfig
    from manager.train.distributed import PeerError
    from manager.train.run import train_task

    cfg = TrainConfig(
        method=method,
        groups=groups,
        shuffle=shuffle,
        drop_path=drop_path,
        lora_rank=lora_rank,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        img_size=img_size,
        seed=seed,
        storage_dtype=storage_dtype,
        precision=precision,
        compile=compile_,
    )
    err = console(stderr=True)
    progress = _progress(err, epochs) if err.is_terminal else _epoch_lines
    log = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))
    try:
        out = train_task(
            app.home,
            app.catalog,
            task,
            cfg,
            device=device,
            resume=resume,
            fit_budget=fit_budget,
            budget_bytes=budget_bytes,
            promote=not no_promote,
            train_split=train_split,
            eval_split=eval_split,
            progress=progress,
            log=log,
        )
    except PeerError:
        sys.exit(1)  # rank 0 prints this error; the other torchrun processes stay quiet
    if out is None:
        return  # a torchrun process other than rank 0: rank 0 reports
    if as_json:
        echo_json(
            {
                "task": out.task,
                "version": out.number,
                "method": out.method,
                "structure": format_structure(out.structure, "json") if out.structure else None,
                "bytes": out.bytes,
                "backbone_bytes": out.backbone_bytes,
                "metrics": out.metrics,
                "seconds": round(out.seconds, 1),
                "path": str(out.path),
            }
        )
        return
    m = out.metrics
    pct = 100.0 * out.bytes / out.backbone_bytes if out.backbone_bytes else 0.0
    shape = format_structure(out.structure) if out.structure else ""
    click.echo(
        f"{out.task} v{out.number} ({out.method}{' g=' + shape if shape else ''})"
        f": top-1 {m['top1']:.1f}%  top-5 {m['top5']:.1f}% on {m['eval_images']} images\n"
        f"  stored {format_size(out.bytes)} ({pct:.2f}% of the backbone's "
        f"{format_size(out.backbone_bytes)})\n"
        f"  trained {m['train_images']} images x {epochs} epochs at "
        f"{m['train_images_per_s']:.0f} img/s in {out.seconds:.0f} s\n"
        f"  artifact {out.path}"
    )


def _epoch_lines(event: StepEvent | EpochEvent) -> None:
    from manager.train.loop import EpochEvent

    if isinstance(event, EpochEvent):
        click.echo(
            f"epoch {event.epoch}/{event.epochs}  loss {event.loss:.4f}  "
            f"lr {event.lr:.2e}  {event.images_per_s:.0f} img/s",
            err=True,
        )
        sys.stderr.flush()


def _progress(err, epochs: int):
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from manager.train.loop import StepEvent

    bar = Progress(
        TextColumn("epoch {task.fields[epoch]}/" + str(epochs)),
        BarColumn(),
        TextColumn(
            "loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"
        ),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    state = {"id": None}

    def update(event: StepEvent | EpochEvent) -> None:
        if state["id"] is None:
            bar.start()
            state["id"] = bar.add_task(
                "train", total=None, epoch=1, loss=float("nan"), lr=0.0, ips=0.0
            )
        tid = state["id"]
        if isinstance(event, StepEvent):
            bar.update(
                tid,
                total=event.steps,
                completed=event.step,
                epoch=event.epoch,
                loss=event.loss,
                lr=event.lr,
            )
        else:
            bar.update(tid, ips=event.images_per_s)
            if event.epoch == event.epochs:
                bar.stop()

    return update
