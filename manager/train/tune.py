"""``mgr train TASK --tune``: a budgeted search over the per-role rates, weight decay and DropPath.

Successive halving (Jamieson & Talwalkar, 2016): ``configs`` candidate settings each train
``r`` epochs; the best ``1/eta`` of them train ``eta * r`` epochs; and so on until ``eta`` or
fewer remain, whose best is chosen. Every rung costs about the same, so the whole search costs
``rungs x configs x r`` epochs, and ``r`` is set so that this is ``budget`` times one run's epochs.

Trials are scored by top-1 on the task's validation split, so the reported test accuracy stays
untouched by the choice. Where the split trained on is ``trainval`` (Pets, VTAB-1k), trials train
on ``train`` and are scored on ``val``, as VTAB's protocol does; where there is no usable
validation split (or the run reports on it), 20% of the training split is held out, class by
class, chosen by the seed. Trials run ``train_adapter``: the very code of the final run.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from manager.catalog import Catalog, budgets, tasks
from manager.delta.delta import DeltaMeta
from manager.device import resolve_device
from manager.errors import BadInput, BudgetExceeded, MgrError
from manager.home import Home
from manager.progress import current, showing
from manager.train.config import RunOptions, TrainConfig
from manager.train.data import ImageTensors
from manager.train.groups import resolve_lrs
from manager.train.methods import Method, get_method, storage_dtype
from manager.train.run import TRAIN_SPLIT, build_model
from manager.train.task_info import TaskInfo, load_task_info
from manager.train.train_adapter import TrainData, prepare_model, train_adapter

KNOBS = ("lr", "lr_norm", "lr_branch", "weight_decay", "drop_path")
WEIGHT_DECAYS = (0.0, 1e-4, 1e-2, 0.1)
DROP_PATHS = (0.0, 0.2, 0.5)
HOLDOUT = 0.2
MIN_HOLDOUT_IMAGES = 10  # below this a 20% hold-out has one or two images: no signal


@dataclass(frozen=True)
class Plan:
    """The search: candidate settings and, per rung, how many survive and for how many epochs."""

    candidates: list[dict[str, float]]
    rungs: list[tuple[int, int]]  # (configs trained, epochs each)
    eta: int
    epochs: int  # one run's

    @property
    def trials(self) -> int:
        return sum(n for n, _ in self.rungs)

    @property
    def cost(self) -> float:
        """Trial epochs over one run's epochs."""
        return sum(n * e for n, e in self.rungs) / self.epochs

    def describe(self, knobs: Sequence[str]) -> str:
        steps = ", then ".join(f"{n} x {_epochs(e)}" for n, e in self.rungs)
        names = ", ".join(k.replace("_", " ") for k in knobs)
        return (
            f"tune: {len(self.candidates)} configs ({names}) by successive halving: {steps}; "
            f"{self.trials} trials, ~{self.cost:.1f}x one run, then the final run"
        )


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _lr_grid(lo: float, hi: float, n: int) -> list[float]:
    if n == 1:
        return [math.sqrt(lo * hi)]
    return [float(f"{lo * (hi / lo) ** (i / (n - 1)):.2g}") for i in range(n)]


def candidates(
    cfg: TrainConfig, method: Method, knobs: Sequence[str], n: int
) -> list[dict[str, float | None]]:
    """``n`` settings. Only the lr: a log-spaced grid over the method's range. Otherwise the
    current settings first, then the lr stratified on a log scale (one draw from each of
    ``n - 1`` equal slices, shuffled), the norm and branch rates log-uniform in their ranges and
    the others drawn from their grids, all by the seed. A role rate left None follows the lr."""
    lo, hi = method.lr_range
    current = resolve_lrs(cfg, method)
    base: dict[str, float | None] = {
        "lr": current.lr,
        # Searched: start from the resolved default; else as given (None: lr x the method's scale).
        "lr_norm": current.lr_norm if "lr_norm" in knobs else cfg.lr_norm,
        "lr_branch": current.lr_branch if "lr_branch" in knobs else cfg.lr_branch,
        "weight_decay": cfg.weight_decay,
        "drop_path": cfg.drop_path,
    }
    if list(knobs) == ["lr"]:
        return [{**base, "lr": lr} for lr in _lr_grid(lo, hi, n)]
    rng = random.Random(cfg.seed)
    slices = list(range(n - 1))
    rng.shuffle(slices)
    ranges = {"lr_norm": method.norm_range, "lr_branch": method.branch_range}
    out = [dict(base)]
    for k in slices:
        c = dict(base)
        if "lr" in knobs:
            u = (k + rng.random()) / (n - 1)
            c["lr"] = float(f"{lo * (hi / lo) ** u:.2g}")
        for knob, bounds in ranges.items():
            if knob in knobs and bounds is not None:
                a, b = bounds
                c[knob] = float(f"{a * (b / a) ** rng.random():.2g}")
        if "weight_decay" in knobs:
            c["weight_decay"] = rng.choice(WEIGHT_DECAYS)
        if "drop_path" in knobs:
            c["drop_path"] = rng.choice(DROP_PATHS)
        out.append(c)
    return out


def make_plan(
    cfg: TrainConfig,
    method: Method,
    knobs: Sequence[str],
    *,
    configs: int = 9,
    eta: int = 3,
    budget: float = 2.0,
) -> Plan:
    """Rungs of ``configs``, ``configs/eta``, ... (while more than one remains), with the first
    rung's epochs set so the search costs ``budget`` runs; no trial runs longer than one run."""
    if not knobs:
        raise BadInput("nothing to tune: rates, weight decay and DropPath are all set explicitly")
    if configs < 2:
        raise BadInput(f"tune_configs must be at least 2, got {configs}")
    if not (math.isfinite(budget) and budget > 0):
        raise BadInput(f"tune_budget must be a positive number of runs, got {budget}")
    sizes = [configs]
    while sizes[-1] > eta:
        sizes.append(math.ceil(sizes[-1] / eta))
    weight = sum(n * eta**k for k, n in enumerate(sizes))
    r = max(1, math.floor(budget * cfg.epochs / weight))
    rungs = [(n, min(cfg.epochs, r * eta**k)) for k, n in enumerate(sizes)]
    return Plan(candidates(cfg, method, knobs, configs), rungs, eta, cfg.epochs)


def holdout(data: ImageTensors, seed: int) -> tuple[ImageTensors, ImageTensors]:
    """(train, held): every fifth image of each class, in an order shuffled by ``seed``."""
    n = len(data)
    if n < MIN_HOLDOUT_IMAGES:
        raise BadInput(
            f"tuning: the training split has {n} images; holding out {HOLDOUT:.0%} of it to "
            f"score trials needs at least {MIN_HOLDOUT_IMAGES}",
            hint="train without --tune",
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    labels = data.labels.tolist()
    seen: dict[int, int] = {}
    held = []
    for i in order:
        seen[labels[i]] = seen.get(labels[i], 0) + 1
        if seen[labels[i]] % 5 == 0:
            held.append(i)
    if len(held) < n // 10:  # classes of fewer than five images: hold out by position instead
        held = order[4::5]
    keep = sorted(set(range(n)) - set(held))
    held = sorted(held)
    return (
        ImageTensors(data.images[keep], data.labels[keep]),
        ImageTensors(data.images[held], data.labels[held]),
    )


def _score(trial: dict) -> float:
    return trial["score"] if trial.get("score") is not None else -math.inf


def search(
    model: nn.Module,
    method: Method,
    cfg: TrainConfig,
    data: TrainData,
    plan: Plan,
    *,
    meta: DeltaMeta,
    device: torch.device | str = "cpu",
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Run ``plan`` on ``data`` (trained on ``train``, scored on ``eval``); ``model`` is the
    backbone with its head, not yet prepared (each trial prepares a copy). Returns the record:
    every trial, and ``chosen``, the best-scoring setting of the last rung."""
    trials: list[dict[str, Any]] = []
    alive = list(range(len(plan.candidates)))
    done = 0
    for rung, (keep, epochs) in enumerate(plan.rungs):
        # The current settings (candidate 0) always go on: the choice is never below them.
        alive = alive[:keep] if 0 in alive[:keep] else [*alive[: keep - 1], 0]
        scored = []
        for idx in alive:
            c = plan.candidates[idx]
            warmup = cfg.warmup_epochs
            if warmup is not None:  # the same share of a shorter schedule
                warmup = round(warmup * epochs / cfg.epochs)
            tcfg = cfg.replace(**c, epochs=epochs, warmup_epochs=warmup, tune=None)
            trial: dict[str, Any] = {"config": idx, "rung": rung, **c, "epochs": epochs}
            t0 = time.perf_counter()
            m = copy.deepcopy(model)
            torch.manual_seed(cfg.seed)
            prepare_model(m, method, tcfg)
            try:
                # A bar per epoch on a terminal, but the trial's one line below is what stays.
                with showing(current().transient()):
                    _, metrics = train_adapter(m, method, tcfg, data, device, meta=meta)
                trial["score"] = round(metrics["top1"], 3)
            except MgrError as exc:  # a diverged trial scores nothing; the search goes on
                trial["score"], trial["error"] = None, str(exc)
            trial["seconds"] = round(time.perf_counter() - t0, 1)
            trials.append(trial)
            scored.append((idx, trial))
            done += 1
            shown = "diverged" if trial["score"] is None else f"top-1 {trial['score']:.1f}%"
            log(f"tune: trial {done}/{plan.trials} ({_epochs(epochs)}) {describe(c)}: {shown}")
        # Stable: among equal scores the earlier candidate (the current settings first) wins.
        alive = [idx for idx, _ in sorted(scored, key=lambda s: -_score(s[1]))]
    best = next(t for t in trials if t["config"] == alive[0] and t["rung"] == len(plan.rungs) - 1)
    if best["score"] is None:
        raise MgrError(f"tuning: every trial failed; the first: {trials[0].get('error')}")
    chosen = {k: best[k] for k in KNOBS}
    return {"trials": trials, "chosen": {**chosen, "score": best["score"]}}


def describe(c: dict) -> str:
    """One setting in a line: ``lr 1.0e-02 (norms 3.3e-03, branches 1.0e-03) wd 0.0001 dp 0``."""
    roles = [
        f"{name} {c[k]:.1e}"
        for k, name in (("lr_norm", "norms"), ("lr_branch", "branches"))
        if c.get(k) is not None
    ]
    extra = f" ({', '.join(roles)})" if roles else ""
    return f"lr {c['lr']:.1e}{extra}  wd {c['weight_decay']:g}  dp {c['drop_path']:g}"


def _decode(info: Any, model: nn.Module, split: str) -> ImageTensors:
    from manager.datasets import create_dataset
    from manager.datasets.transforms import data_config
    from manager.train.data import decode_transform

    tf = decode_transform(data_config(model)["img_size"])
    return ImageTensors.decode(create_dataset(info.dataset, info.data_root, split, tf), name=split)


def tuning_data(
    info: Any,
    model: nn.Module,
    train_split: str | None,
    eval_split: str,
    seed: int,
    log: Callable[[str], Any],
) -> tuple[TrainData, str]:
    """The trials' data and the name of what scores them: ``val`` or ``holdout20``."""
    split = train_split or TRAIN_SPLIT.get(info.dataset.split(":", 1)[0], "train")
    if split in ("train", "trainval") and eval_split != "val":
        try:
            val = _decode(info, model, "val")
        except MgrError as exc:
            log(f"tune: no usable validation split ({exc}); holding out 20% of {split}")
        else:
            if len(val):
                return TrainData(_decode(info, model, "train"), val), "val"
    train, held = holdout(_decode(info, model, split), seed)
    return TrainData(train, held), "holdout20"


def tune_task(
    home: Home,
    catalog: Catalog,
    task: str | TaskInfo,
    cfg: TrainConfig,
    knobs: Sequence[str],
    opts: RunOptions | None = None,
    *,
    log: Callable[[str], Any] = print,
) -> TrainConfig:
    """Search ``knobs`` for ``task`` (its name or snapshot); returns ``cfg`` with the chosen
    values and, in ``cfg.tune``, the record of the search (for ``train_task`` to train and
    record). ``opts``: the run's options (``tune_configs``, ``tune_budget``, ``budget_bytes``,
    ``device`` and the splits are read)."""
    opts = opts or RunOptions()
    configs, budget, budget_bytes = opts.tune_configs, opts.tune_budget, opts.budget_bytes
    t0 = time.perf_counter()
    method = get_method(cfg.method)
    plan = make_plan(cfg, method, knobs, configs=configs, budget=budget)
    info = task if isinstance(task, TaskInfo) else load_task_info(catalog, task)
    dev = resolve_device(opts.device)
    torch.manual_seed(cfg.seed)  # the head the final run will start from
    model, backbone = build_model(home, catalog, info, cfg.img_size)
    dtype = storage_dtype(cfg.storage_dtype)
    meta = DeltaMeta(method.name, backbone.spec, backbone.content_hash, dtype, info.num_classes)
    # Refuse before the search what the final run would refuse after it.
    probe = copy.deepcopy(model)
    prepare_model(probe, method, cfg)
    projected = len(method.export(probe, meta).to_bytes())
    del probe
    if budget_bytes is not None and projected > budget_bytes:
        raise BudgetExceeded(
            f"the {method.name} artifact needs {projected} bytes, over budget_bytes={budget_bytes}",
            hint="use a coarser --groups",
        )
    with catalog.session(write=False) as s:
        budgets.check_fits(s, tasks.get_task(s, info.name), projected)
    data, split = tuning_data(info, model, opts.train_split, opts.eval_split, cfg.seed, log)
    log(f"{plan.describe(knobs)}; trials train on {len(data.train)} images, scored on {split}")
    record = search(model, method, cfg, data, plan, meta=meta, device=dev, log=log)
    chosen = record["chosen"]
    log(f"tune: chose {describe(chosen)} ({split} top-1 {chosen['score']:.1f}%)")
    tune = {
        "method": "successive_halving",
        "split": split,
        "knobs": list(knobs),
        "configs": len(plan.candidates),
        "eta": plan.eta,
        "budget": budget,
        "cost": round(plan.cost, 2),
        "train_images": len(data.train),
        "eval_images": len(data.eval),
        "seconds": round(time.perf_counter() - t0, 1),
        **record,
    }
    values = {k: chosen[k] for k in KNOBS}
    return resolve_lrs(cfg.replace(**values, tune=tune), method)
