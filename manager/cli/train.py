"""``mgr train TASK``: train an adapter, consolidate it, record a new version."""

from __future__ import annotations

import sys
from typing import Any

import click
from click.core import ParameterSource

from manager.catalog import tasks as task_ops
from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import MAX_EPOCHS, SEED, FiniteFloat, Groups, Int64, Size, device_option
from manager.errors import MgrError
from manager.progress import Display, showing
from manager.store.fs import Store
from manager.train.config import TrainConfig
from manager.units import format_size, parse_size

METHOD_CHOICES = ("consolidator", "linear", "bitfit", "bitfit_ln", "lora", "full")


class LearningRate(FiniteFloat):
    """A positive finite number, or ``auto``: search it (``--tune`` with the lr alone)."""

    name = "float|auto"

    def __init__(self) -> None:
        super().__init__(0, min_open=True)

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        return super().convert(value, param, ctx)


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
    type=LearningRate(),
    metavar="LR|auto",
    default=TrainConfig.lr,
    help="Peak learning rate of the head and biases, and of the branches and LayerNorms unless "
    "--lr-branch/--lr-norm say otherwise; 'auto' searches it on the validation split (--tune "
    "with the lr alone). [default: measured per method: 1e-2 for the Consolidator, linear, "
    "bitfit, bitfit_ln and lora, 3e-4 for full]",
)
@click.option(
    "--lr-norm",
    type=FiniteFloat(0, min_open=True),
    default=TrainConfig.lr_norm,
    help="Peak learning rate of every LayerNorm. [default: --lr / 3 for the Consolidator and "
    "bitfit_ln, --lr for full: LayerNorms are what breaks first at high rates]",
)
@click.option(
    "--lr-branch",
    type=FiniteFloat(0, min_open=True),
    default=TrainConfig.lr_branch,
    help="Peak learning rate of the adapter branches (Consolidator, LoRA A/B). [default: "
    "--lr / 10 for the Consolidator (1e-3: its branches start at +-1e-3), --lr for lora]",
)
@click.option(
    "--tune",
    is_flag=True,
    help="Search lr, the LayerNorms' and branches' rates and DropPath (the Consolidator's) and "
    "weight decay on the validation split, "
    "or 20% held out of the training split where there is none, by successive halving; then "
    "train with the best; the current settings always reach the last rung. Any knob given "
    "explicitly is held fixed. The trials and the choice are recorded with the version "
    "(mgr versions TASK --trials).",
)
@click.option(
    "--tune-budget",
    type=FiniteFloat(0, min_open=True),
    default=2.0,
    show_default=True,
    help="What the search may cost, in runs of --epochs (the final run comes on top).",
)
@click.option(
    "--tune-configs",
    type=Int64(2, 1000),
    default=9,
    show_default=True,
    help="Candidate settings in the search's first rung (a third survive each rung).",
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
    "--promote",
    "promote_mode",
    type=click.Choice(["gate", "always", "never"]),
    default="gate",
    show_default=True,
    help="When the new version becomes the champion (the active version): 'gate' only if it "
    "beats the champion's top-1 by --gate-margin on the validation split (test where training "
    "used val); 'always'; 'never'. A task's first version always does.",
)
@click.option(
    "--gate-margin",
    type=FiniteFloat(-100, 100),
    default=0.0,
    show_default=True,
    help="Points of top-1 the new version must gain over the champion (negative: may lose).",
)
@click.option(
    "--gate-split",
    type=click.Choice(["val", "test", "train", "trainval"]),
    help="Compare on this split. [default: val; test where training used val]",
)
@click.option("--no-promote", is_flag=True, help="Same as --promote never.")
# -- continual adaptation (issue 21) --
@click.option(
    "--init",
    metavar="champion|TASK@V",
    help="Warm start from a recorded version's adapter (branches, biases, norms, head): "
    "'champion' (this task's), TASK@V or OTHER@V on the same backbone, method and structure. "
    "Head rows are matched by class name; new classes start fresh.",
)
@click.option(
    "--if-changed",
    is_flag=True,
    help="Train only if the data (file list, sizes, mtimes), the label set or the settings "
    "differ from the champion's; otherwise print one line and exit 0 (for nightly jobs).",
)
@click.option(
    "--hash-data",
    is_flag=True,
    help="Fingerprint the data's file contents too, not only names, sizes and mtimes (slow).",
)
@click.option(
    "--max-class-drop",
    type=FiniteFloat(0, 100),
    default=30.0,
    show_default=True,
    help="The gate refuses a version that loses more than this many points of top-1 on any "
    "class the champion knew (classes with 10+ evaluation images), even if its top-1 rises.",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print the result and errors only: no progress bars, epoch lines or notes "
    "(--json implies it).",
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
    lr: float | str | None,
    lr_norm: float | None,
    lr_branch: float | None,
    tune: bool,
    tune_budget: float,
    tune_configs: int,
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
    promote_mode: str,
    gate_margin: float,
    gate_split: str | None,
    no_promote: bool,
    init: str | None,
    if_changed: bool,
    hash_data: bool,
    max_class_drop: float,
    quiet: bool,
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
      mgr train pets --promote always      # skip the gate: the new version becomes champion
      mgr train pets --lr 1e-2 --lr-norm 3e-3 --lr-branch 1e-3   # the Consolidator's defaults
      mgr train pets --tune                  # rates per role, wd, DropPath: ~2x one run
      mgr train pets --lr auto               # the lr alone
      mgr train pets --method full --batch-size 256 --lr 4e-4 --compile
      torchrun --standalone --nproc-per-node 4 -m manager train pets --batch-size 256
      mgr train pets --if-changed --init champion   # nightly: only when the data changed
    """
    # Cheap checks before the heavy imports, so a typo fails in a fraction of a second.
    budget_bytes = parse_size(budget) if budget is not None else None
    with app.session(write=False) as s:
        task_ops.get_task(s, task)
    # Linked artifacts/<task> or runs/<task> folders that lead outside the home are refused here.
    store = Store.of(app.home)
    store.task_dir(task)
    knobs = _tune_knobs(method, lr, tune, resume, fit_budget)
    if resume and not store.checkpoint(task).is_file():
        raise MgrError(f"nothing to resume: no checkpoint of an interrupted run of {task!r}")

    from manager.delta.structure import format_structure
    from manager.train.config import TrainConfig
    from manager.train.distributed import PeerError
    from manager.train.lineage import Unchanged
    from manager.train.run import train_task

    cfg = TrainConfig(
        method=method,
        groups=groups,
        shuffle=shuffle,
        drop_path=drop_path,
        lora_rank=lora_rank,
        epochs=epochs,
        warmup_epochs=warmup_epochs,
        lr=None if lr == "auto" else lr,
        lr_norm=lr_norm,
        lr_branch=lr_branch,
        weight_decay=weight_decay,
        batch_size=batch_size,
        img_size=img_size,
        seed=seed,
        storage_dtype=storage_dtype,
        precision=precision,
        compile=compile_,
    )
    # Bars on a terminal, a line per epoch in logs, nothing with --quiet/--json (manager.progress).
    click.get_current_context().with_resource(showing(Display.for_stderr(quiet or as_json)))
    log = (lambda msg: None) if as_json or quiet else (lambda msg: click.echo(msg, err=True))
    if knobs is not None:
        from manager.train import distributed
        from manager.train.tune import tune_task

        if distributed.from_env() is not None:  # torchrun's env, checked (a bad value is one line)
            raise MgrError("--tune and --lr auto run in one process; run them without torchrun")
        cfg = tune_task(
            app.home,
            app.catalog,
            task,
            cfg,
            knobs,
            configs=tune_configs,
            budget=tune_budget,
            budget_bytes=budget_bytes,
            device=device,
            train_split=train_split,
            eval_split=eval_split,
            log=log,
        )
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
            promote="never" if no_promote else promote_mode,
            gate_margin=gate_margin,
            gate_split=gate_split,
            train_split=train_split,
            eval_split=eval_split,
            log=log,
            init=init,
            if_changed=if_changed,
            hash_data=hash_data,
            max_class_drop=max_class_drop,
        )
    except Unchanged as nothing:
        if as_json:
            echo_json({"task": task, "trained": False, "reason": str(nothing)})
        else:
            click.echo(str(nothing))
        return
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
                "promotion": out.promotion,
                "tune": cfg.tune,
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
    if cfg.tune:
        from manager.train.tune import describe

        c, t = cfg.tune["chosen"], cfg.tune
        click.echo(
            f"  tuned: {describe(c)} (best of {t['configs']} on {t['split']}: "
            f"{c['score']:.1f}%, {len(t['trials'])} trials in {t['seconds']:.0f} s)"
        )
    if out.promotion is not None:
        from manager.cli.promote import describe_promotion

        click.echo(describe_promotion(out.number, out.promotion))


def _tune_knobs(
    method: str, lr: float | str | None, tune: bool, resume: bool, fit_budget: bool
) -> list[str] | None:
    """What --tune / --lr auto search (None: no search). Of the rates (lr, and the norms' and
    branches' where the method searches them apart), weight decay and DropPath, those given
    explicitly are held fixed; DropPath is searched for the Consolidator only."""
    if not tune and lr != "auto":
        return None
    flag = "--tune" if tune else "--lr auto"
    if resume:
        raise MgrError(f"{flag} cannot resume a run; rerun with the chosen values, or without it")
    if fit_budget:
        raise MgrError(
            f"{flag} cannot be combined with --fit-budget; pass the structure as --groups"
        )
    if not tune:
        return ["lr"]
    from manager.train.methods import get_method

    ctx = click.get_current_context()
    m = get_method(method)
    roles = [k for k, r in (("lr_norm", m.norm_range), ("lr_branch", m.branch_range)) if r]
    wanted = ["lr", *roles, "weight_decay"] + (["drop_path"] if method == "consolidator" else [])
    knobs = [
        k
        for k in wanted
        if (k == "lr" and lr == "auto")
        or ctx.get_parameter_source(k) in (ParameterSource.DEFAULT, None)
    ]
    if not knobs:
        raise MgrError(f"{flag}: nothing to tune; rates, weight decay and DropPath are all given")
    return knobs
