"""Images decoded once into a uint8 tensor, so epochs cost only the model's time.

The paper's recipe has no augmentation, so every epoch sees the same pixels: decoding and
bicubic-resizing JPEGs again each epoch would waste most of a 2-core machine's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from manager.datasets.transforms import to_rgb


def decode_transform(img_size: int) -> transforms.Compose:
    """Bicubic resize to a square, no crop, as uint8 (normalised later, per batch)."""
    return transforms.Compose(
        [
            transforms.Lambda(to_rgb),
            transforms.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC),
            transforms.PILToTensor(),
        ]
    )


@dataclass
class ImageTensors:
    """A whole split in memory: ``images`` uint8 [N, 3, S, S], ``labels`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def decode(cls, dataset: Dataset, *, workers: int = 0) -> ImageTensors:
        """Decode ``dataset`` (whose transform yields uint8 CHW tensors) once."""
        loader = DataLoader(dataset, batch_size=64, shuffle=False, num_workers=workers)
        images, labels = [], []
        for x, y in loader:
            images.append(x)
            labels.append(torch.as_tensor(y))
        return cls(torch.cat(images), torch.cat(labels).long())

    def batches(
        self,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches; shuffled when a generator is given."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else None
        mean = mean.view(1, -1, 1, 1)
        scale = (255.0 * std).view(1, -1, 1, 1)
        for start in range(0, n, batch_size):
            sel = (
                slice(start, start + batch_size)
                if order is None
                else order[start : start + batch_size]
            )
            x = self.images[sel].float().sub_(255.0 * mean).div_(scale)
            yield x, self.labels[sel]
