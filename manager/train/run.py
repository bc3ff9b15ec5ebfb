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

from manager.catalog import Catalog, budgets, reservations, tasks
from manager.catalog.models import Backbone, Task
from manager.delta.delta import DeltaMeta
from manager.delta.structure import Structure, format_structure
from manager.device import precision_name, resolve_device
from manager.errors import MgrError
from manager.home import Home
from manager.registry.backbones import load_backbone, materialise_backbone
from manager.registry.record import record_version
from manager.specs import format_spec, split_spec
from manager.store.fs import Store
from manager.train import distributed
from manager.train.checkpoint import Checkpoint
from manager.train.config import TrainConfig
from manager.train.distributed import Dist
from manager.train.groups import resolve_lrs
from manager.train.loop import ProgressFn
from manager.train.methods import Method, get_method, storage_dtype
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


@dataclass(frozen=True)
class _TaskInfo:
    """What a run needs of its task row, read once."""

    id: int
    name: str
    dataset: str
    data_root: str | None
    num_classes: int
    spec: str
    weights: str | None
    backbone_id: int | None
    parent_id: int | None
    class_names: tuple[str, ...] = ()  # the task's label set, in label order


def _task_info(task: Task) -> _TaskInfo:
    parent = task.active_version_id or (task.versions[-1].id if task.versions else None)
    return _TaskInfo(
        task.id,
        task.name,
        task.dataset,
        task.data_root,
        task.num_classes,
        task.backbone_spec,
        task.weights,
        task.backbone_id,
        parent,
        tuple(task.class_names),
    )


def load_task_info(catalog: Catalog, task_name: str) -> _TaskInfo:
    """What a run needs of task ``task_name``, read once (the tuner builds the same model)."""
    with catalog.session(write=False) as s:
        return _task_info(tasks.get_task(s, task_name))


def build_model(
    home: Home, catalog: Catalog, info: _TaskInfo, img_size: int | None
) -> tuple[nn.Module, Backbone]:
    """The task's backbone with a fresh head, materialised and bound to the task on first use."""
    from manager.backbone import build_backbone, new_head

    with catalog.session(write=False) as s:
        bound = s.get(Backbone, info.backbone_id) if info.backbone_id else None
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
            raise MgrError(
                f"task {info.name!r} takes {own} px input (backbone {spec}); --img-size "
                f"{img_size} would bind another backbone: register a task for that size with "
                f"'mgr task add NAME --backbone {base} --img-size {img_size} ...'"
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


def _task_row(s: Any, info: _TaskInfo) -> Task:
    task = s.get(Task, info.id)
    if task is None:
        raise MgrError(f"task {info.name!r} was removed while it was being trained")
    return task


def _fit_budget(
    catalog: Catalog,
    info: _TaskInfo,
    model: nn.Module,
    cfg: TrainConfig,
    method: Method,
    meta: DeltaMeta,
    budget_bytes: int | None,
    log: Callable[[str], Any],
) -> TrainConfig:
    """``cfg`` with the finest one-branch structure that fits the budgets (a new config)."""
    from manager.adapters.sizing import finest_fitting, single_branch_candidates

    if method.name != "consolidator":
        raise MgrError(
            "--fit-budget picks a consolidator structure; it needs --method consolidator"
        )
    if cfg.groups:
        return cfg
    with catalog.session(write=False) as s:
        room = budgets.headroom(s, _task_row(s, info))
    limits = [x for x in (room, budget_bytes) if x is not None]
    if not limits:
        return cfg
    chosen = finest_fitting(
        model,
        single_branch_candidates(model, cfg.shuffle, cfg.drop_path),
        min(limits),
        meta.dtype,
        num_classes=info.num_classes,
        backbone_name=meta.backbone,
        backbone_hash=meta.backbone_hash,
    )
    groups = format_structure(chosen.branches)
    log(f"--fit-budget: structure g={groups} fits {min(limits)} bytes")
    return dataclasses.replace(cfg, groups=groups)


def _reserve(catalog: Catalog, info: _TaskInfo, projected: int) -> int:
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
    info: _TaskInfo, model: nn.Module, train_split: str | None, eval_split: str
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
    task_name: str,
    cfg: TrainConfig,
    *,
    device: str = "auto",
    resume: bool = False,
    fit_budget: bool = False,
    budget_bytes: int | None = None,
    promote: bool | str = "gate",
    gate_margin: float = 0.0,
    gate_split: str | None = None,
    train_split: str | None = None,
    eval_split: str = EVAL_SPLIT,
    progress: ProgressFn | None = None,
    log: Callable[[str], Any] = print,
    init: str | None = None,
    if_changed: bool = False,
    hash_data: bool = False,
    max_class_drop: float | None = None,
) -> TrainOutcome | None:
    """Train ``task_name``'s adapter and record it as a new version (see the module docstring).

    ``init``: start from that version's adapter (``champion``, ``TASK@V``; see
    ``manager.train.warmstart``). ``if_changed``: raise ``manager.train.lineage.Unchanged``
    before any work when the data, classes and settings match the champion's. ``hash_data``:
    fingerprint file contents, not only sizes and mtimes. ``max_class_drop``: the gate's limit
    on any one class's loss of top-1 (points).

    ``promote``: ``"gate"`` (the champion changes only if the new version beats it by
    ``gate_margin`` points on ``gate_split``, see ``manager.train.gate``), ``"always"``,
    ``"never"``; True and False mean always and never.

    Under torchrun (``WORLD_SIZE`` > 1) every process calls this: rank 0 returns the outcome,
    the other ranks train their share and return None (``manager.train.distributed``).
    """
    ctx = distributed.from_env()
    dev = distributed.rank_device(resolve_device(device), ctx)
    with distributed.process_group(ctx, dev):
        return _train(
            home,
            catalog,
            task_name,
            cfg,
            dev,
            ctx,
            resume=resume,
            fit_budget=fit_budget,
            budget_bytes=budget_bytes,
            promote=promote,
            gate_margin=gate_margin,
            gate_split=gate_split,
            train_split=train_split,
            eval_split=eval_split,
            progress=progress,
            log=log,
            init=init,
            if_changed=if_changed,
            hash_data=hash_data,
            max_class_drop=max_class_drop,
        )


@dataclass
class _Prepared:
    """A run's model and settings, checked against the budgets (and reserved, on rank 0)."""

    cfg: TrainConfig
    model: nn.Module
    backbone: Backbone
    structure: Structure | None
    meta: DeltaMeta
    reservation: int | None = None


def _prepare(
    home: Home,
    catalog: Catalog,
    info: _TaskInfo,
    cfg: TrainConfig,
    method: Method,
    dtype: torch.dtype,
    *,
    fit_budget: bool,
    budget_bytes: int | None,
    reserve: bool,
    log: Callable[[str], Any],
) -> _Prepared:
    torch.manual_seed(cfg.seed)
    model, backbone = build_model(home, catalog, info, cfg.img_size)
    meta = DeltaMeta(method.name, backbone.spec, backbone.content_hash, dtype, info.num_classes)
    if fit_budget:
        cfg = _fit_budget(catalog, info, model, cfg, method, meta, budget_bytes, log)
    structure = prepare_model(model, method, cfg)
    if not reserve:
        return _Prepared(cfg, model, backbone, structure, meta)
    projected = len(method.export(model, meta).to_bytes())
    if budget_bytes is not None and projected > budget_bytes:
        raise MgrError(
            f"the {method.name} artifact needs {projected} bytes, over --budget "
            f"{budget_bytes}; use a coarser --groups or --fit-budget"
        )
    return _Prepared(cfg, model, backbone, structure, meta, _reserve(catalog, info, projected))


def _train(
    home: Home,
    catalog: Catalog,
    task_name: str,
    cfg: TrainConfig,
    dev: torch.device,
    ctx: Dist | None,
    *,
    resume: bool,
    fit_budget: bool,
    budget_bytes: int | None,
    promote: bool | str,
    gate_margin: float,
    gate_split: str | None,
    train_split: str | None,
    eval_split: str,
    progress: ProgressFn | None,
    log: Callable[[str], Any],
    init: str | None = None,
    if_changed: bool = False,
    hash_data: bool = False,
    max_class_drop: float | None = None,
) -> TrainOutcome | None:
    from manager.datasets.transforms import data_config
    from manager.train import lineage

    t0 = time.perf_counter()
    method = get_method(cfg.method)
    dtype = storage_dtype(cfg.storage_dtype)
    cfg = dataclasses.replace(cfg, precision=precision_name(cfg.precision, dev))
    cfg = resolve_lrs(cfg, method)  # every group's rate recorded, defaults filled in
    with catalog.session(write=False) as s:
        info = _task_info(tasks.get_task(s, task_name))
    store = Store.of(home)
    store.task_dir(task_name)  # a linked artifacts folder is refused before any work
    checkpoint = Checkpoint.of(store, task_name)
    if resume and not checkpoint.exists():
        raise MgrError(f"nothing to resume: no checkpoint of an interrupted run of {task_name!r}")
    trained_on = train_split or TRAIN_SPLIT.get(info.dataset.split(":", 1)[0], "train")
    classes = list(info.class_names)
    settings = lineage.settings_hash(cfg, trained_on, eval_split)
    identity = lineage.data_identity(info.dataset, info.data_root, content=hash_data)
    if if_changed:
        with catalog.session(write=False) as s:
            champ = tasks.get_task(s, task_name).active_version
            champ_lineage = champ.lineage if champ is not None else None
            champ_label = f"{task_name}@{champ.number}" if champ is not None else None
        reason = lineage.unchanged_reason(champ_lineage, identity, classes, settings)
        if reason is not None:
            raise lineage.Unchanged(f"{champ_label} {reason}")
    source = _init_source(home, catalog, task_name, init, method.name) if init else None

    def prepare(cfg: TrainConfig, *, fit: bool, reserve: bool) -> _Prepared:
        return _prepare(
            home,
            catalog,
            info,
            cfg,
            method,
            dtype,
            fit_budget=fit,
            budget_bytes=budget_bytes,
            reserve=reserve,
            log=log,
        )

    if ctx is None:
        run = prepare(cfg, fit=fit_budget, reserve=True)
    elif ctx.is_main:
        # Rank 0 decides (backbone bound, structure fitted, budget reserved) before any rank
        # trains; the others wait for the verdict and build the same model from its settings.
        try:
            run = prepare(cfg, fit=fit_budget, reserve=True)
        except Exception as e:
            ctx.decide(str(e) if isinstance(e, MgrError) else f"rank 0 failed: {e}")
            raise
        ctx.decide(None, run.cfg.to_json())
    else:
        cfg = TrainConfig(**ctx.decide(None))
        run = prepare(cfg, fit=False, reserve=False)
    try:
        started = None
        if source is not None:
            from manager.train.warmstart import warm_start

            if source.delta.meta.backbone_hash != run.backbone.content_hash:
                raise MgrError(
                    f"--init {source.label}: it was trained on another backbone "
                    f"({source.delta.meta.backbone}); warm starts need the task's backbone"
                )
            started = warm_start(run.model, source, classes)
        data = load_data(info, run.model, train_split, eval_split)
        result = fit_adapter(
            run.model,
            method,
            run.cfg,
            data,
            dev,
            checkpoint=checkpoint,
            resume=resume,
            progress=progress,
            ctx=ctx,
        )
        if ctx is not None and not ctx.is_main:
            return None
        delta, metrics = export_adapter(
            run.model, method, data, result, dev, meta=run.meta, class_names=classes or None
        )
        hyper = {
            **run.cfg.to_json(),
            "img_size": data_config(run.model)["img_size"],
            "device": str(dev),
            "world_size": ctx.world if ctx is not None else 1,
        }
        # The promotion gate: score the new delta against the champion before recording.
        from manager.train.gate import decide

        mode = promote if isinstance(promote, str) else ("always" if promote else "never")
        decision = decide(
            home, catalog, task_name, delta, mode, backbone=run.backbone, trained_on=trained_on,
            eval_split=eval_split, margin=gate_margin, split=gate_split, device=dev, log=log,
            classes=classes or None, max_class_drop=max_class_drop,
        )  # fmt: skip
        record = {
            "classes": classes,
            "data": {
                **identity,
                "train": lineage.split_record(trained_on, data.train.labels, classes),
                "eval": lineage.split_record(eval_split, data.eval.labels, classes),
            },
            "settings_hash": settings,
            "parent": _parent_number(catalog, info.parent_id),
            "init": started,
        }
        recorded = record_version(
            catalog,
            task_name,
            delta,
            structure=run.structure,
            hyperparams=hyper,
            metrics=metrics,
            parent_id=info.parent_id,
            promote=decision,
            reservation=run.reservation,
            lineage=record,
        )
    except BaseException:
        if run.reservation is not None:
            _release(catalog, run.reservation)
        raise
    checkpoint.remove()
    return TrainOutcome(
        task_name,
        recorded.number,
        method.name,
        run.structure,
        recorded.bytes,
        run.backbone.bytes,
        metrics,
        time.perf_counter() - t0,
        recorded.path,
        recorded.promotion,
    )


def _parent_number(catalog: Catalog, parent_id: int | None) -> int | None:
    from manager.catalog.models import AdapterVersion

    if parent_id is None:
        return None
    with catalog.session(write=False) as s:
        row = s.get(AdapterVersion, parent_id)
        return row.number if row is not None else None


def _init_source(home: Home, catalog: Catalog, task_name: str, text: str, method: str) -> Any:
    """The version ``--init`` names, its delta loaded and checked (see manager.train.warmstart)."""
    from manager.catalog.lineage import resolve_init
    from manager.train.gate import load_champion
    from manager.train.warmstart import InitSource

    with catalog.session(write=False) as s:
        ref, classes = resolve_init(s, task_name, text)
        bound = s.get(Backbone, ref.backbone_id) if ref.backbone_id else None
        if bound is None:
            raise MgrError(f"--init {ref.label}: its task is not bound to a backbone")
        s.expunge(bound)
    try:
        delta = load_champion(Store.of(home), ref, bound)
    except MgrError as exc:
        raise MgrError(f"--init {ref.label}: {exc}") from None
    if delta.meta.method != method:
        raise MgrError(
            f"--init {ref.label}: it is a {delta.meta.method} adapter and this run trains "
            f"{method}; warm starts need the same method and structure"
        )
    return InitSource(ref.task, ref.number, delta, classes)
