"""Images decoded once into a uint8 tensor, so epochs cost only the model's time.

The paper's recipe has no augmentation, so every epoch sees the same pixels: decoding and
bicubic-resizing JPEGs again each epoch would waste most of a 2-core machine's time. A split moves
to the training device once, still as uint8 (a quarter of float32's bytes), and each batch is
gathered and normalised there: no float images cross from the host per step.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from manager import progress
from manager.datasets.transforms import to_rgb

IGNORE = -100  # label of a padding row (F.cross_entropy's default ignore_index)


def decode_transform(img_size: int) -> transforms.Compose:
    """Bicubic resize to a square, no crop, as uint8 (normalised later, per batch)."""
    return transforms.Compose(
        [
            transforms.Lambda(to_rgb),
            transforms.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC),
            transforms.PILToTensor(),
        ]
    )


class Normalise:
    """uint8 pixels -> ``(x / 255 - mean) / std`` in float32, computed as ``(x - 255 mean) /
    (255 std)`` on the pixels' own device; the constants move there once, not per batch."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, device: torch.device | str):
        self.shift = (255.0 * mean.float()).view(1, -1, 1, 1).to(device)
        self.scale = (255.0 * std.float()).view(1, -1, 1, 1).to(device)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.float().sub_(self.shift).div_(self.scale)


class Batch(NamedTuple):
    """One process's share of a global batch: ``n`` real samples in the whole global batch;
    rows labelled ``IGNORE`` are padding (only in a last batch that does not split evenly)."""

    x: torch.Tensor
    y: torch.Tensor
    n: int


@dataclass
class ImageTensors:
    """A whole split in memory: ``images`` uint8 [N, 3, S, S], ``labels`` int64 [N]."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device | str) -> ImageTensors:
        """The split on ``device``, still uint8 (no copy when it is already there)."""
        return ImageTensors(self.images.to(device), self.labels.to(device))

    @classmethod
    def decode(cls, dataset: Dataset, *, workers: int = 0, name: str = "") -> ImageTensors:
        """Decode ``dataset`` (whose transform yields uint8 CHW tensors) once.

        Minutes on a real set: the current ``manager.progress`` display shows a bar (images,
        images/s, ETA) while it runs, labelled with ``name`` (a split's, say); it leaves no line,
        so a command that then fails still prints its one error line alone.
        """
        loader = DataLoader(dataset, batch_size=64, shuffle=False, num_workers=workers)
        images, labels = [], []
        label = f"decoding {name}".strip()
        with progress.current().count(label, total=len(dataset)) as bar:  # type: ignore[arg-type]
            for x, y in loader:
                images.append(x)
                labels.append(torch.as_tensor(y))
                bar.advance(len(x))
        return cls(torch.cat(images), torch.cat(labels).long())

    def batches(
        self,
        batch_size: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised float batches on the split's device; shuffled when a generator is given."""
        norm = Normalise(mean, std, self.device)
        for x, y, _ in self.epoch(batch_size, norm, generator=generator):
            yield x, y

    def epoch(
        self,
        batch_size: int,
        norm: Normalise,
        *,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world: int = 1,
    ) -> Iterator[Batch]:
        """This process's share of each global batch of ``batch_size`` over one epoch.

        The order (``generator``, on the CPU, seeded alike on every process) is drawn once and
        moved to the device once; global batch ``k`` is ``order[k*B : (k+1)*B]`` and process
        ``rank`` takes rows ``[rank*m, (rank+1)*m)`` of it, ``m = ceil(len / world)``. A share
        short of ``m`` rows (only in the last batch) is padded with ``IGNORE`` labels, so every
        process takes the same number of equally shaped steps and the shares are disjoint.
        """
        n = len(self)
        if generator is not None:
            order = torch.randperm(n, generator=generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for start in range(0, n, batch_size):
            sel = order[start : start + batch_size]
            size = len(sel)
            share = -(-size // world)
            mine = sel[rank * share : (rank + 1) * share]
            pad = share - len(mine)
            x = norm(self.images.index_select(0, mine))
            y = self.labels.index_select(0, mine)
            if pad:
                x = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))])
                y = torch.cat([y, y.new_full((pad,), IGNORE)])
            yield Batch(x, y, size)
