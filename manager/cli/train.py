"""``mgr train TASK``: train an adapter, consolidate it, record a new version.

Every option's default is a config field's (``TrainConfig``, the method's config, ``RunOptions``),
read from the dataclasses here, so ``mgr train --help`` and the Python API cannot drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from manager.adapters.config import METHODS
from manager.cli.app import App, echo_json, json_option, pass_app
from manager.cli.types import DEVICE, SEED, FiniteFloat, Groups, Int64, Size
from manager.errors import MgrError
from manager.progress import Display, showing
from manager.train.config import (
    BATCH_SIZES,
    IMG_SIZES,
    MAX_EPOCHS,
    PRECISIONS,
    PROMOTE_MODES,
    STORAGE_DTYPES,
    RunOptions,
    TrainConfig,
)
from manager.units import format_size

if TYPE_CHECKING:
    from manager.train.run import TrainOutcome

METHOD_CHOICES = METHODS

# Where each option goes: the method's flat options (``method_config``), TrainConfig's fields
# and RunOptions' fields, by click parameter name -> field name.
ADAPTER_OPTIONS = {k: k for k in ("method", "groups", "shuffle", "drop_path", "lora_rank")}
ADAPTER_OPTIONS["lora_alpha"] = "lora_alpha"
CONFIG_OPTIONS = {
    **{k: k for k in ("epochs", "warmup_epochs", "lr", "lr_norm", "lr_branch", "weight_decay",
                      "batch_size", "img_size", "seed", "storage_dtype", "precision")},
    "compile_": "compile",
}  # fmt: skip
RUN_OPTIONS = {
    **{k: k for k in ("device", "resume", "fit_budget", "train_split", "eval_split",
                      "gate_margin", "gate_split", "init", "if_changed", "hash_data",
                      "max_class_drop", "tune_budget", "tune_configs")},
    "budget": "budget_bytes",
    "promote_mode": "promote",
}  # fmt: skip


def option_defaults() -> dict[str, Any]:
    """Each option's default, by click parameter name, read from the config dataclasses."""
    cfg, opts = TrainConfig(), RunOptions()
    flat = cfg.to_json()  # the method's options as the catalog records them (method_config's)
    method = {k: flat.get(f) for k, f in ADAPTER_OPTIONS.items()}  # lora_alpha: None, the rank
    return {
        **method,
        **{k: getattr(cfg, f) for k, f in CONFIG_OPTIONS.items()},
        **{k: getattr(opts, f) for k, f in RUN_OPTIONS.items()},
    }


_D = option_defaults()


def _option(*decls: str, **kw: Any) -> Callable:
    """``click.option`` with its default from the configs (``_D``), by parameter name."""
    name = kw.pop("name", None) or decls[-1].lstrip("-").replace("-", "_")
    if name in _D:
        kw.setdefault("default", _D[name])
    return click.option(*decls, **kw)


def _options(*decorators: Callable) -> Callable:
    """Apply click options in the order given (the order ``--help`` shows them)."""

    def apply(f: Callable) -> Callable:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


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


RATE = FiniteFloat(0, min_open=True)

METHOD_FLAGS = _options(
    _option("--method", type=click.Choice(METHOD_CHOICES), show_default=True,
            help="Consolidator, or a baseline trained the same way."),
    _option("--groups", type=Groups(),
            help="Consolidator branches: g per branch, e.g. '384' or '384,192'; a trailing 's' "
            "reorders that branch's input channels ('96,96s'). [default: two input "
            "channels per group: 384 on ViT-B, 96 on DeiT-tiny]"),
    _option("--shuffle", is_flag=True, help="Reorder the input channels of every branch."),
    _option("--drop-path", type=FiniteFloat(0, 1, max_open=True), show_default=True,
            help="DropPath on each branch's output. 0 by default: measured on DeiT-tiny with "
            "Flowers-102 and Pets (5 epochs, 3 seeds), 0 and 0.5 tie and 0 trains ~25% faster. "
            "For long schedules try 0.2-0.8 (the paper used 0.8 on Flowers and Pets at 100 "
            "epochs)."),
    _option("--lora-rank", type=Int64(1, 4096), show_default=True,
            help="Rank of the LoRA baseline."),
    _option("--lora-alpha", type=RATE,
            help="LoRA's alpha: the update is alpha / rank * B A. [default: the rank]"),
    _option("--budget", type=Size(),
            help="Refuse (or with --fit-budget, fit) above this size, e.g. 300KB."),
    _option("--fit-budget", is_flag=True,
            help="Pick the finest one-branch structure that fits the budgets."),
)  # fmt: skip

SCHEDULE_FLAGS = _options(
    _option("--epochs", type=Int64(1, MAX_EPOCHS), show_default=True),
    _option("--warmup-epochs", type=Int64(0, MAX_EPOCHS), help="[default: 10% of --epochs]"),
    _option("--lr", type=LearningRate(), metavar="LR|auto",
            help="Peak learning rate of the head and biases, and of the branches and LayerNorms "
            "unless --lr-branch/--lr-norm say otherwise; 'auto' searches it on the validation "
            "split (--tune with the lr alone). [default: measured per method: 1e-2 for the "
            "Consolidator, linear, bitfit, bitfit_ln and lora, 3e-4 for full]"),
    _option("--lr-norm", type=RATE,
            help="Peak learning rate of every LayerNorm. [default: --lr / 3 for the Consolidator "
            "and bitfit_ln, --lr for full: LayerNorms are what breaks first at high rates]"),
    _option("--lr-branch", type=RATE,
            help="Peak learning rate of the adapter branches (Consolidator, LoRA A/B). [default: "
            "--lr / 10 for the Consolidator (1e-3: its branches start at +-1e-3), --lr for lora]"),
    _option("--tune", is_flag=True,
            help="Search lr, the LayerNorms' and branches' rates and DropPath (the "
            "Consolidator's) and weight decay on the validation split, or 20% held out of the "
            "training split where there is none, by successive halving; then train with the "
            "best; the current settings always reach the last rung. Any knob given explicitly "
            "is held fixed. The trials and the choice are recorded with the version "
            "(mgr versions TASK --trials)."),
    _option("--tune-budget", type=RATE, show_default=True,
            help="What the search may cost, in runs of --epochs (the final run comes on top)."),
    _option("--tune-configs", type=Int64(2, 1000), show_default=True,
            help="Candidate settings in the search's first rung (a third survive each rung)."),
    _option("--weight-decay", type=FiniteFloat(0), show_default=True,
            help="AdamW weight decay (never on biases and norms)."),
    _option("--batch-size", type=Int64(*BATCH_SIZES), show_default=True,
            help="Global batch (under torchrun, shared out among the processes). The learning "
            "rate is never scaled with it: pass the --lr you want for that batch."),
    _option("--img-size", type=Int64(*IMG_SIZES),
            help="Input size (bicubic resize). [default: the backbone's own]"),
    _option("--seed", type=SEED, show_default=True),
    _option("--dtype", "storage_dtype", name="storage_dtype", type=click.Choice(STORAGE_DTYPES),
            show_default=True, help="Storage dtype of the artifact."),
)  # fmt: skip

COMPUTE_FLAGS = _options(
    _option("--device", type=DEVICE, show_default=True,
            help="Where to run: auto (cuda when available, else cpu), cpu, cuda, cuda:N or mps."),
    _option("--precision", type=click.Choice(PRECISIONS),
            help="Autocast precision of the forward and backward (fp16 scales the loss); "
            "parameters, optimizer state and the artifact keep their dtypes. [default: bf16 on "
            "CUDA, fp32 on CPU]"),
    _option("--compile", "compile_", name="compile_", is_flag=True,
            help="torch.compile the model for training (the first step waits; pays off on long "
            "runs)."),
    _option("--train-split", help="[default: the official training split: train, or trainval]"),
    _option("--eval-split", show_default=True, help="Split the reported accuracy is measured on."),
    _option("--resume", is_flag=True, help="Continue from the task's last epoch checkpoint."),
)  # fmt: skip

GATE_FLAGS = _options(
    _option("--promote", "promote_mode", name="promote_mode", type=click.Choice(PROMOTE_MODES),
            show_default=True,
            help="When the new version becomes the champion (the active version): 'gate' only "
            "if it beats the champion's top-1 by --gate-margin on the validation split (test "
            "where training used val); 'always'; 'never'. A task's first version always does."),
    _option("--gate-margin", type=FiniteFloat(-100, 100), show_default=True,
            help="Points of top-1 the new version must gain over the champion (negative: may "
            "lose)."),
    _option("--gate-split", type=click.Choice(["val", "test", "train", "trainval"]),
            help="Compare on this split. [default: val; test where training used val]"),
    _option("--no-promote", is_flag=True, help="Same as --promote never."),
    _option("--init", metavar="champion|TASK@V",
            help="Warm start from a recorded version's adapter (branches, biases, norms, head): "
            "'champion' (this task's), TASK@V or OTHER@V on the same backbone, method and "
            "structure. Head rows are matched by class name; new classes start fresh."),
    _option("--if-changed", is_flag=True,
            help="Train only if the data (file list, sizes, mtimes), the label set or the "
            "settings differ from the champion's; otherwise print one line and exit 0 (for "
            "nightly jobs)."),
    _option("--hash-data", is_flag=True,
            help="Fingerprint the data's file contents too, not only names, sizes and mtimes "
            "(slow)."),
    _option("--max-class-drop", type=FiniteFloat(0, 100), show_default=True,
            help="The gate refuses a version that loses more than this many points of top-1 on "
            "any class the champion knew (classes with 10+ evaluation images), even if its "
            "top-1 rises."),
)  # fmt: skip


@click.command("train")
@click.argument("task")
@METHOD_FLAGS
@SCHEDULE_FLAGS
@COMPUTE_FLAGS
@GATE_FLAGS
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="Print the result and errors only: no progress bars, epoch lines or notes "
    "(--json implies it).",
)
@json_option
@pass_app
def command(app: App, task: str, quiet: bool, as_json: bool, tune: bool, **kw: Any) -> None:
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
    from manager.train.task_info import task_info

    # Cheap checks before the heavy imports, so a typo fails in a fraction of a second: the
    # task's one read (handed on to the tuner, trainer and gate), then its folders.
    with app.session(write=False) as s:
        from manager.catalog import tasks as task_ops

        info = task_info(task_ops.get_task(s, task))
    cfg, opts = _configs(kw)
    knobs = _tune_knobs(cfg.method, kw["lr"], tune, opts.resume, opts.fit_budget)
    _check_folders(app, task, opts)

    from manager.train.distributed import PeerError
    from manager.train.lineage import Unchanged
    from manager.train.run import train_task

    # Bars on a terminal, a line per epoch in logs, nothing with --quiet/--json (manager.progress).
    click.get_current_context().with_resource(showing(Display.for_stderr(quiet or as_json)))
    log = (lambda msg: None) if as_json or quiet else (lambda msg: click.echo(msg, err=True))
    if knobs is not None:
        cfg = _tune(app, info, cfg, knobs, opts, log)
    try:
        out = train_task(app.home, app.catalog, info, cfg, opts, log=log)
    except Unchanged as nothing:
        if as_json:
            echo_json({"task": task, "trained": False, "reason": str(nothing)})
        else:
            click.echo(str(nothing))
        return
    except PeerError:
        sys.exit(1)  # rank 0 prints this error; the other torchrun processes stay quiet
    if out is not None:  # None: a torchrun process other than rank 0, which reports
        _report(out, cfg, as_json)


def _configs(kw: dict[str, Any]) -> tuple[TrainConfig, RunOptions]:
    """The typed configs from the parsed options (each checks itself: ``BadInput``)."""
    flat = {field: kw[k] for k, field in {**ADAPTER_OPTIONS, **CONFIG_OPTIONS}.items()}
    if flat["lr"] == "auto":
        flat["lr"] = None
    run = {field: kw[k] for k, field in RUN_OPTIONS.items()}
    if kw["no_promote"]:
        run["promote"] = "never"
    return TrainConfig.from_json(flat), RunOptions(**run)


def _check_folders(app: App, task: str, opts: RunOptions) -> None:
    from manager.store.fs import Store

    # Linked artifacts/<task> or runs/<task> folders that lead outside the home are refused here.
    store = Store.of(app.home)
    store.task_dir(task)
    if opts.resume and not store.checkpoint(task).is_file():
        raise MgrError(f"nothing to resume: no checkpoint of an interrupted run of {task!r}")


def _tune(
    app: App, info: Any, cfg: TrainConfig, knobs: list[str], opts: RunOptions, log: Callable
) -> TrainConfig:
    from manager.train import distributed
    from manager.train.tune import tune_task

    if distributed.from_env() is not None:  # torchrun's env, checked (a bad value is one line)
        raise MgrError("--tune and --lr auto run in one process; run them without torchrun")
    return tune_task(app.home, app.catalog, info, cfg, knobs, opts, log=log)


def _report(out: TrainOutcome, cfg: TrainConfig, as_json: bool) -> None:
    from manager.delta.structure import format_structure

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
        f"  trained {m['train_images']} images x {cfg.epochs} epochs at "
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
