"""One adapter's training as a pure function: a model, a method, settings and data in; a delta and
its metrics out. No catalog, no files (the caller may pass a checkpoint object), so the CLI's
trainer, the benchmarks and the tests all run the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from manager.adapters.config import ConsolidatorConfig
from manager.adapters.fold import num_classes_of
from manager.adapters.validate import check_config
from manager.delta.delta import Delta, DeltaMeta
from manager.delta.structure import Structure, normalize
from manager.errors import Diverged
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors
from manager.train.distributed import Dist
from manager.train.loop import CheckpointIO, FitResult, ProgressFn, fit
from manager.train.methods import Method


@dataclass(frozen=True)
class TrainData:
    """The decoded splits of one run: trained on ``train``, reported on ``eval``."""

    train: ImageTensors
    eval: ImageTensors


def prepare_model(model: nn.Module, method: Method, cfg: TrainConfig) -> Structure | None:
    """Check ``cfg`` against the model's real layer widths, then make the model trainable.

    Returns the consolidator's structure (None for the other methods). Cheap: call it before any
    data is decoded, so a LoRA rank or a group count the model cannot take is refused at once.
    """
    check_config(model, cfg.adapter)
    structure = None
    if isinstance(cfg.adapter, ConsolidatorConfig):
        structure = normalize(cfg.adapter.for_model(model).branches or ())
    method.prepare(model, cfg)
    return structure


def fit_adapter(
    model: nn.Module,
    method: Method,
    cfg: TrainConfig,
    data: TrainData,
    device: torch.device | str = "cpu",
    *,
    checkpoint: CheckpointIO | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
    ctx: Dist | None = None,
) -> FitResult:
    """Train a model made by ``prepare_model`` (every rank of a torchrun run calls this)."""
    from manager.datasets.transforms import data_config

    lr = cfg.lr if cfg.lr is not None else method.default_lr
    dc = data_config(model)
    return fit(
        model,
        data.train,
        cfg,
        lr=lr,
        mean=torch.tensor(dc["mean"]),
        std=torch.tensor(dc["std"]),
        device=device,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        ctx=ctx,
    )


def export_adapter(
    model: nn.Module,
    method: Method,
    data: TrainData,
    result: FitResult,
    device: torch.device | str = "cpu",
    *,
    meta: DeltaMeta,
    class_names: list[str] | None = None,
) -> tuple[Delta, dict[str, Any]]:
    """Evaluate a trained model on ``data.eval`` (float32, on ``device``) and export its delta.

    ``class_names`` adds top-1 per class (``per_class_top1``) to the metrics.

    A delta with any non-finite value (e.g. one that overflows the storage dtype) raises
    MgrError: such a delta is never returned.
    """
    from manager.datasets.transforms import data_config
    from manager.train.evaluate import evaluate

    dc = data_config(model)
    metrics: dict[str, Any] = evaluate(
        model,
        data.eval.to(device),
        num_classes_of(model),
        torch.tensor(dc["mean"]),
        torch.tensor(dc["std"]),
        device=device,
        class_names=class_names,
    )
    metrics.update(
        train_images_per_s=round(result.images_per_s, 2),
        final_loss=result.final_loss,
        train_images=len(data.train),
        eval_images=len(data.eval),
    )
    delta = method.export(model.cpu(), meta)
    bad = delta.nonfinite()
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        dtype = str(meta.dtype).removeprefix("torch.")
        raise Diverged(
            f"the trained adapter holds NaN or infinite values ({bad[0]}{more}, in {dtype}): "
            "the run diverged and nothing was recorded",
            hint="try a smaller --lr",
        )
    return delta, metrics


def train_adapter(
    model: nn.Module,
    method: Method,
    cfg: TrainConfig,
    data: TrainData,
    device: torch.device | str = "cpu",
    *,
    meta: DeltaMeta,
    checkpoint: CheckpointIO | None = None,
    resume: bool = False,
    progress: ProgressFn | None = None,
) -> tuple[Delta, dict[str, Any]]:
    """Train a model made by ``prepare_model`` in this one process; return its delta and metrics.

    ``meta`` names the backbone and storage dtype of the delta. A run whose loss or weights go
    non-finite raises MgrError, and so does a non-finite delta (see ``export_adapter``).
    """
    result = fit_adapter(
        model, method, cfg, data, device, checkpoint=checkpoint, resume=resume, progress=progress
    )
    return export_adapter(model, method, data, result, device, meta=meta)
