"""``mgr train TASK``: from a catalog task to a recorded, consolidated adapter version.

Order matters for "nothing lost": the projected size is checked against the budgets before any
training; the artifact is written to a temp name, then renamed to ``v<N>`` and recorded in one
write transaction that re-checks the budgets, so a crash leaves either no version or a complete one.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from manager.catalog import Catalog, budgets, tasks, versions
from manager.catalog.models import Backbone, Task
from manager.delta.delta import DeltaMeta
from manager.errors import MgrError
from manager.home import Home
from manager.specs import format_spec, split_spec
from manager.store import artifact_path, file_sha256, load_backbone, materialise_backbone
from manager.train.config import TrainConfig
from manager.train.loop import ProgressFn, fit
from manager.train.methods import consolidator_config, get_method, storage_dtype

# Default splits: train on the official training split, report on the official test split.
TRAIN_SPLIT = {"pets": "trainval", "vtab1k": "trainval"}
EVAL_SPLIT = "test"


@dataclass
class TrainOutcome:
    task: str
    number: int
    method: str
    structure: Any
    bytes: int
    backbone_bytes: int
    metrics: dict[str, float]
    seconds: float
    path: Path
    history: list[dict] = field(default_factory=list)


@dataclass
class _TaskInfo:
    name: str
    dataset: str
    data_root: str | None
    num_classes: int
    spec: str
    weights: str | None
    backbone_id: int | None
    parent_id: int | None


def _task_info(task: Task) -> _TaskInfo:
    parent = task.active_version_id or (task.versions[-1].id if task.versions else None)
    return _TaskInfo(
        task.name,
        task.dataset,
        task.data_root,
        task.num_classes,
        task.backbone_spec,
        task.weights,
        task.backbone_id,
        parent,
    )


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MgrError("--device cuda: no CUDA device is available here")
    return torch.device(device)


def _spec_with_size(spec: str, img_size: int | None) -> str:
    if img_size is None:
        return spec
    name, kwargs = split_spec(spec)
    kwargs["img_size"] = img_size
    return format_spec(name, kwargs)


def build_model(home: Home, catalog: Catalog, info: _TaskInfo, img_size: int | None):
    """The task's backbone with a fresh head, materialised and bound to the task on first use."""
    from manager.backbone import build_backbone, new_head

    with catalog.session(write=False) as s:
        bound = s.get(Backbone, info.backbone_id) if info.backbone_id else None
        if bound is not None:
            s.expunge(bound)
    spec = _spec_with_size(info.spec, img_size)
    if bound is not None:
        if split_spec(bound.spec) != split_spec(spec) and img_size is not None:
            raise MgrError(
                f"task {info.name!r} is trained on backbone {bound.spec}; its versions must all "
                f"use it (--img-size {img_size} would change it)"
            )
        model = load_backbone(home, bound, num_classes=0)
    else:
        model = build_backbone(spec, info.weights, num_classes=0)
        with catalog.session() as s:
            row = materialise_backbone(s, home, model, spec, info.weights)
            task = tasks.get_task(s, info.name)
            task.backbone_id = row.id
            bound = row
            s.flush()
            s.expunge(bound)
    new_head(model, info.num_classes)
    return model, bound


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
    promote: bool = True,
    train_split: str | None = None,
    eval_split: str = EVAL_SPLIT,
    progress: ProgressFn | None = None,
    log: Any = print,
) -> TrainOutcome:
    from manager.datasets import create_dataset
    from manager.datasets.transforms import data_config
    from manager.adapters.sizing import finest_fitting, single_branch_candidates
    from manager.train.data import ImageTensors, decode_transform
    from manager.train.evaluate import evaluate

    t0 = time.perf_counter()
    method = get_method(cfg.method)
    dtype = storage_dtype(cfg.storage_dtype)
    dev = resolve_device(device)
    torch.manual_seed(cfg.seed)
    with catalog.session(write=False) as s:
        info = _task_info(tasks.get_task(s, task_name))
    checkpoint = home.checkpoint(task_name)
    if resume and not checkpoint.exists():
        raise MgrError(f"nothing to resume: no checkpoint of an interrupted run of {task_name!r}")

    model, backbone = build_model(home, catalog, info, cfg.img_size)
    meta = DeltaMeta(method.name, backbone.spec, backbone.content_hash, dtype, info.num_classes)

    # Budgets first: the structure alone fixes the artifact's size, so refuse before training.
    with catalog.session(write=False) as s:
        task = tasks.get_task(s, task_name)
        room = budgets.headroom(s, task)
    limit = (
        min(x for x in (room, budget_bytes) if x is not None)
        if (room is not None or budget_bytes is not None)
        else None
    )
    if fit_budget and method.name == "consolidator" and limit is not None and not cfg.groups:
        chosen = finest_fitting(
            model,
            single_branch_candidates(model, cfg.shuffle, cfg.drop_path),
            limit,
            dtype,
            num_classes=info.num_classes,
            backbone_name=backbone.spec,
            backbone_hash=backbone.content_hash,
        )
        cfg.groups = str(chosen)
        log(f"--fit-budget: structure g={cfg.groups} fits {limit} bytes")
    elif fit_budget and method.name != "consolidator":
        raise MgrError(
            "--fit-budget picks a consolidator structure; it needs --method consolidator"
        )
    method.prepare(model, cfg)
    structure = (
        [[b.g, b.shuffle] for b in consolidator_config(model, cfg).branches]
        if method.name == "consolidator"
        else None
    )
    projected = len(method.export(model, meta).to_bytes())
    if budget_bytes is not None and projected > budget_bytes:
        raise MgrError(
            f"the {method.name} artifact needs {projected} bytes, over --budget "
            f"{budget_bytes}; use a coarser --groups or --fit-budget"
        )
    with catalog.session(write=False) as s:
        budgets.check_fits(s, tasks.get_task(s, task_name), projected)

    # Data, decoded once.
    dc = data_config(model)
    mean, std = torch.tensor(dc["mean"]), torch.tensor(dc["std"])
    split = train_split or TRAIN_SPLIT.get(info.dataset.split(":", 1)[0], "train")
    tf = decode_transform(dc["img_size"])
    train = ImageTensors.decode(create_dataset(info.dataset, info.data_root, split, tf))
    test = ImageTensors.decode(create_dataset(info.dataset, info.data_root, eval_split, tf))

    lr = cfg.lr if cfg.lr is not None else method.default_lr
    result = fit(
        model,
        train,
        cfg,
        lr=lr,
        mean=mean,
        std=std,
        device=dev,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
    )
    metrics = evaluate(model, test, info.num_classes, mean, std, device=dev)
    metrics.update(
        train_images_per_s=round(result.images_per_s, 2),
        final_loss=result.final_loss,
        train_images=len(train),
        eval_images=len(test),
    )

    delta = method.export(model.cpu(), meta)
    tmp = home.task_dir(task_name) / f".pending-{os.getpid()}.safetensors"
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        size = delta.save(tmp)
        digest = file_sha256(tmp)
        hyper = {**cfg.to_json(), "lr": lr, "img_size": dc["img_size"], "device": str(dev)}
        with catalog.session() as s:
            task = tasks.get_task(s, task_name)
            budgets.check_fits(s, task, size)  # again, inside the write lock
            number = versions.next_version_number(s, task)
            path = artifact_path(home, task_name, number)
            os.replace(tmp, path)
            tmp = path  # from here a failed commit must not leave an unrecorded v<N> behind
            version = versions.add_version(
                s,
                task,
                method=method.name,
                structure=structure,
                bytes=size,
                content_hash=digest,
                path=home.rel(path),
                hyperparams=hyper,
                metrics=metrics,
                parent_id=info.parent_id,
                number=number,
            )
            if promote or task.active_version_id is None:
                versions.promote(s, task, version)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    checkpoint.unlink(missing_ok=True)
    return TrainOutcome(
        task_name,
        number,
        method.name,
        structure,
        size,
        backbone.bytes,
        metrics,
        time.perf_counter() - t0,
        path,
        result.history,
    )
