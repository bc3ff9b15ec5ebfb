"""Top-1 / top-5 accuracy with torchmetrics, ``average`` given explicitly."""

from __future__ import annotations

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
) -> dict[str, float]:
    """Accuracy over all samples (``average="micro"``): the paper's top-1 figure."""
    was_training = model.training
    model.eval()
    # Rank-local even inside a torchrun process group: rank 0 alone evaluates, so no metric sync.
    top1 = MulticlassAccuracy(
        num_classes=num_classes, top_k=1, average="micro", sync_on_compute=False
    ).to(device)
    top5 = MulticlassAccuracy(
        num_classes=num_classes, top_k=min(5, num_classes), average="micro", sync_on_compute=False
    ).to(device)
    for x, y in data.batches(batch_size, mean, std):
        logits = model(x.to(device))
        y = y.to(device)
        top1.update(logits, y)
        top5.update(logits, y)
    model.train(was_training)
    return {"top1": 100.0 * top1.compute().item(), "top5": 100.0 * top5.compute().item()}
