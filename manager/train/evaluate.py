"""Top-1 / top-5 accuracy with torchmetrics, ``average`` given explicitly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from manager.train.data import ImageTensors


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: ImageTensors,
    num_classes: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    *,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy over all samples (``average="micro"``): the paper's top-1 figure.

    With ``class_names`` also ``per_class_top1``: top-1 (%) of each class that has samples
    (``average=None``), keyed by name: what the forgetting gate compares.
    """
    was_training = model.training
    model.eval()
    # Rank-local even inside a torchrun process group: rank 0 alone evaluates, so no metric sync.
    top1 = MulticlassAccuracy(
        num_classes=num_classes, top_k=1, average="micro", sync_on_compute=False
    ).to(device)
    top5 = MulticlassAccuracy(
        num_classes=num_classes, top_k=min(5, num_classes), average="micro", sync_on_compute=False
    ).to(device)
    per_class = MulticlassAccuracy(
        num_classes=num_classes, top_k=1, average=None, sync_on_compute=False
    ).to(device)
    for x, y in data.batches(batch_size, mean, std):
        logits = model(x.to(device))
        y = y.to(device)
        top1.update(logits, y)
        top5.update(logits, y)
        if class_names is not None:
            per_class.update(logits, y)
    model.train(was_training)
    out: dict[str, Any] = {
        "top1": 100.0 * top1.compute().item(),
        "top5": 100.0 * top5.compute().item(),
    }
    if class_names is not None:
        acc = per_class.compute().tolist() if len(data) else [0.0] * num_classes
        present = torch.bincount(data.labels.cpu(), minlength=num_classes).tolist()
        out["per_class_top1"] = {
            c: round(100.0 * a, 4) for c, a, n in zip(class_names, acc, present, strict=False) if n
        }
    return out
