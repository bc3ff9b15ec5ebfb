"""``mgr train TASK``: from a catalog task to a recorded, consolidated adapter version.

Order matters for "nothing lost" and "nothing wasted": the task's folders are confined under the
home and the settings checked against the model before any data is decoded; the projected size
is checked against the budgets and reserved in one write transaction before any training (so
trainings started together cannot all pass); the trained delta is recorded by
``manager.registry.record.record_version``, which leaves either a complete version or nothing.
Under torchrun, rank 0 alone does all of that; see ``manager.train.distributed``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from manager.adapters.config import ConsolidatorConfig
from manager.catalog import Catalog, budgets, reservations
from manager.catalog.models import Backbone, Task
from manager.delta.delta import DeltaMeta
from manager.delta.structure import Structure, format_structure
from manager.device import precision_name, resolve_device
from manager.errors import (
    BadInput,
    BudgetExceeded,
    Conflict,
    MgrError,
    NotFound,
)
from manager.home import Home
from manager.registry.backbones import load_backbone, materialise_backbone
from manager.registry.record import record_version
from manager.specs import format_spec, split_spec
from manager.store.fs import Store
from manager.train import distributed
from manager.train.checkpoint import Checkpoint
from manager.train.config import RunOptions, TrainConfig
from manager.train.distributed import Dist
from manager.train.groups import resolve_lrs
from manager.train.loop import ProgressFn
from manager.train.methods import Method, get_method, storage_dtype
from manager.train.task_info import TaskInfo, load_task_info
from manager.train.train_adapter import TrainData, export_adapter, fit_adapter, prepare_model

# Default splits: train on the official training split, report on the official test split.
TRAIN_SPLIT = {"pets": "trainval", "vtab1k": "trainval"}
EVAL_SPLIT = "test"


@dataclass
class TrainOutcome:
    task: str
    number: int
    method: str
    structure: Structure | None
    bytes: int
    backbone_bytes: int
    metrics: dict[str, float]
    seconds: float
    path: Path
    promotion: dict[str, Any] | None = None  # the gate's decision (see manager.train.gate)


def build_model(
    home: Home, catalog: Catalog, info: TaskInfo, img_size: int | None
) -> tuple[nn.Module, Backbone]:
    """The task's backbone with a fresh head, materialised and bound to the task on first use."""
    from manager.backbone import build_backbone, new_head

    with catalog.session(write=False) as s:
        # The row's binding now, not the snapshot's: the tuner may have bound it since.
        backbone_id = _task_row(s, info).backbone_id
        bound = s.get(Backbone, backbone_id) if backbone_id else None
        if bound is not None:
            s.expunge(bound)
    spec = bound.spec if bound is not None else info.spec
    if img_size is not None:
        # The input size is the task's (task add --img-size): a train that quietly bound its
        # versions to a second spec would serve them at a size 'task show' does not print.
        from manager.backbone import spec_img_size

        own = spec_img_size(spec)
        if img_size != own:
            name, kwargs = split_spec(info.spec)
            kwargs.pop("img_size", None)
            base = format_spec(name, kwargs)
            raise BadInput(
                f"task {info.name!r} takes {own} px input (backbone {spec}); "
                f"img_size={img_size} would bind another backbone",
                hint=f"register a task for that size with 'mgr task add NAME --backbone {base} "
                f"--img-size {img_size} ...'",
            )
    if bound is not None:
        model = load_backbone(home, bound, num_classes=0)
    else:
        model = build_backbone(spec, info.weights, num_classes=0)
        with catalog.session() as s:
            row = materialise_backbone(s, home, model, spec, info.weights)
            task = _task_row(s, info)
            task.backbone_id = row.id
            bound = row
            s.flush()
            s.expunge(bound)
    new_head(model, info.num_classes)
    return model, bound


def _task_row(s: Any, info: TaskInfo) -> Task:
    task = s.get(Task, info.id)
    if task is None:
        raise NotFound(f"task {info.name!r} was removed while it was being trained")
    return task


def _fit_budget(
    catalog: Catalog,
    info: TaskInfo,
    model: nn.Module,
    cfg: TrainConfig,
    method: Method,
    meta: DeltaMeta,
    budget_bytes: int | None,
    log: Callable[[str], Any],
) -> TrainConfig:
    """``cfg`` with the finest one-branch structure that fits the budgets (a new config)."""
    from manager.adapters.sizing import finest_fitting, single_branch_candidates

    adapter = cfg.adapter
    if not isinstance(adapter, ConsolidatorConfig):
        raise BadInput(
            f"fit_budget picks a consolidator structure; this run trains {adapter.method}",
            hint="it needs --method consolidator",
        )
    if adapter.branches is not None:
        return cfg
    with catalog.session(write=False) as s:
        room = budgets.headroom(s, _task_row(s, info))
    limits = [x for x in (room, budget_bytes) if x is not None]
    if not limits:
        return cfg
    chosen = finest_fitting(
        model,
        single_branch_candidates(model, adapter.shuffle, adapter.drop_path),
        min(limits),
        meta.dtype,
        num_classes=info.num_classes,
        backbone_name=meta.backbone,
        backbone_hash=meta.backbone_hash,
    )
    log(f"--fit-budget: structure g={format_structure(chosen.branches)} fits {min(limits)} bytes")
    return dataclasses.replace(cfg, adapter=dataclasses.replace(adapter, branches=chosen.branches))


def _reserve(catalog: Catalog, info: TaskInfo, projected: int) -> int:
    """Check the budgets and reserve ``projected`` bytes in one write transaction."""
    with catalog.session() as s:
        reservations.purge_stale(s)
        task = _task_row(s, info)
        budgets.check_fits(s, task, projected)
        return reservations.reserve(s, task, projected)


def _release(catalog: Catalog, reservation: int) -> None:
    # Best effort on the way out of a failed run (its own error is the one to report): a row
    # left behind is stale once this process exits.
    with contextlib.suppress(Exception), catalog.session() as s:
        reservations.release(s, reservation)


def load_data(
    info: TaskInfo, model: nn.Module, train_split: str | None, eval_split: str
) -> TrainData:
    """The task's train and eval splits, decoded once at the model's input size."""
    from manager.datasets import create_dataset
    from manager.datasets.transforms import data_config
    from manager.train.data import ImageTensors, decode_transform
    from manager.train.lineage import label_lut

    split = train_split or TRAIN_SPLIT.get(info.dataset.split(":", 1)[0], "train")
    tf = decode_transform(data_config(model)["img_size"])

    def decode(name: str) -> ImageTensors:
        ds = create_dataset(info.dataset, info.data_root, name, tf)
        out = ImageTensors.decode(ds, name=name)
        if info.class_names and len(out):  # the data's labels, read as the task's (by name)
            out.labels = label_lut(ds.classes, info.class_names, info.name)[out.labels]
        return out

    return TrainData(decode(split), decode(eval_split))


def train_task(
    home: Home,
    catalog: Catalog,
    task: str | TaskInfo,
    cfg: TrainConfig,
    opts: RunOptions | None = None,
    *,
    progress: ProgressFn | None = None,
    log: Callable[[str], Any] = print,
) -> TrainOutcome | None:
    """Train ``task``'s adapter and record it as a new version (see the module docstring).

    ``task``: its name, or the snapshot ``mgr train`` read (``manager.train.task_info``).
    ``opts``: how to run and record (``RunOptions``: device, resume, budgets, the promotion
    gate, warm start, ...). With ``opts.if_changed``, raises ``manager.train.lineage.Unchanged``
    before any work when the data, classes and settings match the champion's.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this: rank 0 returns the outcome,
    the other ranks train their share and return None (``manager.train.distributed``).
    """
    opts = opts or RunOptions()
    info = task if isinstance(task, TaskInfo) else load_task_info(catalog, task)
    ctx = distributed.from_env()
    dev = distributed.rank_device(resolve_device(opts.device), ctx)
    run = _Run(home, catalog, info, opts, dev, ctx, progress, log, get_method(cfg.method))
    with distributed.process_group(ctx, dev):
        return _train(run, cfg)


@dataclass(frozen=True)
class _Run:
    """What every step of one run shares: where, which task, how, and the method."""

    home: Home
    catalog: Catalog
    info: TaskInfo
    opts: RunOptions
    dev: torch.device
    ctx: Dist | None
    progress: ProgressFn | None
    log: Callable[[str], Any]
    method: Method

    @property
    def trained_on(self) -> str:
        return self.opts.train_split or TRAIN_SPLIT.get(self.info.dataset.split(":", 1)[0], "train")

    @property
    def classes(self) -> list[str]:
        return list(self.info.class_names)


@dataclass
class _Prepared:
    """A run's model and settings, checked against the budgets (and reserved, on rank 0)."""

    cfg: TrainConfig
    model: nn.Module
    backbone: Backbone
    structure: Structure | None
    meta: DeltaMeta
    reservation: int | None = None


def _prepare(r: _Run, cfg: TrainConfig, *, main: bool) -> _Prepared:
    """Build and prepare the model; on the main process also fit (``--fit-budget``) and
    reserve the projected size, the others rebuilding what it chose."""
    torch.manual_seed(cfg.seed)
    model, backbone = build_model(r.home, r.catalog, r.info, cfg.img_size)
    dtype = storage_dtype(cfg.storage_dtype)
    meta = DeltaMeta(r.method.name, backbone.spec, backbone.content_hash, dtype, r.info.num_classes)
    budget = r.opts.budget_bytes
    if main and r.opts.fit_budget:
        cfg = _fit_budget(r.catalog, r.info, model, cfg, r.method, meta, budget, r.log)
    structure = prepare_model(model, r.method, cfg)
    if not main:
        return _Prepared(cfg, model, backbone, structure, meta)
    projected = len(r.method.export(model, meta).to_bytes())
    if budget is not None and projected > budget:
        raise BudgetExceeded(
            f"the {r.method.name} artifact needs {projected} bytes, over budget_bytes={budget}",
            hint="use a coarser --groups or --fit-budget",
        )
    reservation = _reserve(r.catalog, r.info, projected)
    return _Prepared(cfg, model, backbone, structure, meta, reservation)


def _agree(r: _Run, cfg: TrainConfig) -> _Prepared:
    """The prepared run; under torchrun rank 0 decides (backbone bound, structure fitted, budget
    reserved) before any rank trains, and the others build the same model from its settings."""
    ctx = r.ctx
    if ctx is None:
        return _prepare(r, cfg, main=True)
    if not ctx.is_main:
        return _prepare(r, TrainConfig.from_json(ctx.decide(None)), main=False)
    try:
        run = _prepare(r, cfg, main=True)
    except Exception as e:
        ctx.decide(str(e) if isinstance(e, MgrError) else f"rank 0 failed: {e}")
        raise
    ctx.decide(None, run.cfg.to_json())
    return run


def _checkpoint(r: _Run) -> Checkpoint:
    name = r.info.name
    store = Store.of(r.home)
    store.task_dir(name)  # a linked artifacts folder is refused before any work
    checkpoint = Checkpoint.of(store, name)
    if r.opts.resume and not checkpoint.exists():
        raise NotFound(f"nothing to resume: no checkpoint of an interrupted run of {name!r}")
    return checkpoint


def _lineage_keys(r: _Run, cfg: TrainConfig) -> tuple[str, dict[str, Any]]:
    """The run's settings hash and data identity; with ``--if-changed``, raise ``Unchanged``
    when both (and the label set) match the champion's."""
    from manager.train import lineage

    settings = lineage.settings_hash(cfg, r.trained_on, r.opts.eval_split)
    info = r.info
    identity = lineage.data_identity(info.dataset, info.data_root, content=r.opts.hash_data)
    if r.opts.if_changed:
        reason = lineage.unchanged_reason(info.champion_lineage, identity, r.classes, settings)
        if reason is not None:
            champ = info.champion
            raise lineage.Unchanged(f"{champ.label if champ else None} {reason}")
    return settings, identity


def _train(r: _Run, cfg: TrainConfig) -> TrainOutcome | None:
    t0 = time.perf_counter()
    cfg = dataclasses.replace(cfg, precision=precision_name(cfg.precision, r.dev))
    cfg = resolve_lrs(cfg, r.method)  # every group's rate recorded, defaults filled in
    checkpoint = _checkpoint(r)
    settings, identity = _lineage_keys(r, cfg)
    source = _init_source(r, r.opts.init) if r.opts.init else None
    run = _agree(r, cfg)
    try:
        started = _warm_start(run, source, r.classes)
        data = load_data(r.info, run.model, r.opts.train_split, r.opts.eval_split)
        result = fit_adapter(
            run.model, r.method, run.cfg, data, r.dev, checkpoint=checkpoint,
            resume=r.opts.resume, progress=r.progress, ctx=r.ctx,
        )  # fmt: skip
        if r.ctx is not None and not r.ctx.is_main:
            return None
        delta, metrics = export_adapter(
            run.model, r.method, data, result, r.dev, meta=run.meta,
            class_names=r.classes or None,
        )  # fmt: skip
        lineage = {
            "classes": r.classes,
            "data": {**identity, **_split_records(r, data)},
            "settings_hash": settings,
            "parent": r.info.parent_number,
            "init": started,
        }
        recorded = _record(r, run, data, delta, metrics, lineage)
    except BaseException:
        if run.reservation is not None:
            _release(r.catalog, run.reservation)
        raise
    checkpoint.remove()
    return TrainOutcome(
        r.info.name, recorded.number, r.method.name, run.structure, recorded.bytes,
        run.backbone.bytes, metrics, time.perf_counter() - t0, recorded.path, recorded.promotion,
    )  # fmt: skip


def _warm_start(run: _Prepared, source: Any, classes: list[str]) -> dict | None:
    """Load ``--init``'s adapter into the prepared model (None: no warm start)."""
    if source is None:
        return None
    from manager.train.warmstart import warm_start

    if source.delta.meta.backbone_hash != run.backbone.content_hash:
        raise BadInput(
            f"init={source.label!r}: it was trained on another backbone "
            f"({source.delta.meta.backbone}); warm starts need the task's backbone"
        )
    return warm_start(run.model, source, classes)


def _split_records(r: _Run, data: TrainData) -> dict[str, Any]:
    from manager.train import lineage

    return {
        "train": lineage.split_record(r.trained_on, data.train.labels, r.classes),
        "eval": lineage.split_record(r.opts.eval_split, data.eval.labels, r.classes),
    }


def _record(
    r: _Run,
    run: _Prepared,
    data: TrainData,
    delta: Any,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
) -> Any:
    """Score ``delta`` against the champion (the promotion gate), then record the version."""
    from manager.datasets.transforms import data_config
    from manager.train.gate import decide

    o = r.opts
    decision = decide(
        r.home, r.info, delta, o.promote, backbone=run.backbone, trained_on=r.trained_on,
        eval_split=o.eval_split, margin=o.gate_margin, split=o.gate_split, device=r.dev,
        log=r.log, classes=r.classes or None, max_class_drop=o.max_class_drop,
    )  # fmt: skip
    hyper = {
        **run.cfg.to_json(),
        "img_size": data_config(run.model)["img_size"],
        "device": str(r.dev),
        "world_size": r.ctx.world if r.ctx is not None else 1,
    }
    return record_version(
        r.catalog, r.info.name, delta, structure=run.structure, hyperparams=hyper,
        metrics=metrics, parent_id=r.info.parent_id, promote=decision,
        reservation=run.reservation, lineage=lineage,
    )  # fmt: skip


def _init_source(r: _Run, text: str) -> Any:
    """The version ``--init`` names, its delta loaded and checked (see manager.train.warmstart)."""
    from manager.catalog.lineage import resolve_init
    from manager.train.gate import load_champion
    from manager.train.warmstart import InitSource

    with r.catalog.session(write=False) as s:
        ref, classes = resolve_init(s, r.info.name, text)
        bound = s.get(Backbone, ref.backbone_id) if ref.backbone_id else None
        if bound is None:
            raise Conflict(f"init={ref.label!r}: its task is not bound to a backbone")
        s.expunge(bound)
    try:
        delta = load_champion(Store.of(r.home), ref, bound)
    except MgrError as exc:
        raise exc.reworded(f"init={ref.label!r}: {exc}") from None
    if delta.meta.method != r.method.name:
        raise BadInput(
            f"init={ref.label!r}: it is a {delta.meta.method} adapter and this run trains "
            f"{r.method.name}; warm starts need the same method and structure"
        )
    return InitSource(ref.task, ref.number, delta, classes)
