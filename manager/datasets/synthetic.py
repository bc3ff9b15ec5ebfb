"""A small generated image set for tests and the offline demo: no files, deterministic.

Class ``k`` is a ``COLOURS[k % 5]`` ``TEXTURES[k % 3]`` ``SHAPES[k % 4]`` (e.g. "red solid
circle") on a noisy grey background, so any two classes differ visibly in shape, colour or
texture. Each image is a pure function of ``(seed, split, index)``; position, size, colour,
background, small distractor shapes and pixel noise vary, so the task is learnable by a tiny ViT
but not solvable from mean colour alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from manager.datasets import classes as light
from manager.datasets.classes import COLOURS, SHAPES, TEXTURES
from manager.datasets.registry import register_dataset
from manager.specs import check_options

# The names, options and class names live in manager.datasets.classes (no torch); here, pixels.
OPTIONS = light.SYNTHETIC_OPTIONS
class_names = light.synthetic_class_names
RGB = dict(
    zip(
        COLOURS,
        [(0.86, 0.16, 0.16), (0.16, 0.70, 0.24), (0.20, 0.31, 0.90), (0.92, 0.80, 0.16),
         (0.78, 0.20, 0.78)],
        strict=True,
    )
)  # fmt: skip
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
DEFAULTS = {k: o.default for k, o in OPTIONS.items()}


def _mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx**2 + dy**2 <= 1.0
    if shape == "square":
        return np.maximum(ax, ay) <= 0.8
    if shape == "triangle":  # apex up, base at the bottom
        return (dy >= -0.9) & (dy <= 0.8) & (ax <= 0.9 * (dy + 0.9) / 1.7)
    return ((ax <= 0.3) & (ay <= 0.95)) | ((ay <= 0.3) & (ax <= 0.95))


def _colour(k: int, rng: np.random.Generator) -> np.ndarray:
    base = np.array(list(RGB.values())[k % len(RGB)])
    return np.clip(base * rng.uniform(0.7, 1.15) + rng.uniform(-0.12, 0.12, 3), 0.0, 1.0)


def render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size x size`` RGB uint8 image of class ``label``.

    Nuisances keep it from being solvable by colour alone: a tinted background with a gradient,
    jittered object colour, position and size, up to two small solid distractor shapes of any
    colour, and pixel noise.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    tint = rng.uniform(0.3, 0.7) + rng.uniform(-0.1, 0.1, 3)
    slope = rng.uniform(-0.25, 0.25, 2) / size
    img = tint + ((xx - size / 2) * slope[0] + (yy - size / 2) * slope[1])[..., None]
    for _ in range(rng.integers(0, 3)):  # distractors, drawn first so the object covers them
        r = rng.uniform(0.08, 0.14) * size
        cx, cy = rng.uniform(r, size - r, 2)
        m = _mask(SHAPES[rng.integers(4)], (xx - cx) / r, (yy - cy) / r)
        img[m] = _colour(int(rng.integers(len(RGB))), rng)

    r = rng.uniform(0.2, 0.36) * size  # half-size of the object
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    mask = _mask(SHAPES[label % 4], (xx - cx) / r, (yy - cy) / r)
    period = max(4, round(size / 8))  # texture scale follows the image, visible at 32 px
    texture = TEXTURES[label % 3]
    if texture == "stripes":
        shade = np.where(((xx + yy) // (period / 2)) % 2 == 0, 1.0, 0.45)
    elif texture == "dots":
        px, py = xx % period - period / 2, yy % period - period / 2
        shade = np.where(px**2 + py**2 <= (period / 3.2) ** 2, 0.4, 1.0)
    else:
        shade = np.ones_like(xx)
    img[mask] = (shade[..., None] * _colour(label, rng))[mask]
    img += rng.normal(0.0, 0.06, img.shape)
    return (np.clip(img, 0.0, 1.0) * 255).round().astype(np.uint8)


class SyntheticShapes(Dataset):
    """``num_classes * per_class`` images per split; label of item ``i`` is ``i % num_classes``."""

    def __init__(
        self,
        split: str = "train",
        transform: Callable | None = None,
        num_classes: int = 6,
        per_class: int = 32,
        img_size: int = 32,
        seed: int = 0,
    ):
        check_options(
            "synthetic",
            {
                "num_classes": num_classes,
                "per_class": per_class,
                "img_size": img_size,
                "seed": seed,
            },
            OPTIONS,
        )
        # trainval is train followed by val, item for item.
        self.parts = ("train", "val") if split == "trainval" else (split,)
        self.split, self.transform, self.seed = split, transform, seed
        self.num_classes, self.per_class, self.img_size = num_classes, per_class, img_size
        self.classes = class_names(num_classes)
        self.targets = [i % num_classes for i in range(len(self))]

    def __len__(self) -> int:
        return self.num_classes * self.per_class * len(self.parts)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(index)
        part, i = divmod(index, self.num_classes * self.per_class)
        label = i % self.num_classes
        rng = np.random.default_rng((self.seed, SPLIT_IDS[self.parts[part]], i))
        image = Image.fromarray(render(label, self.img_size, rng), "RGB")
        return (self.transform(image) if self.transform else image), label


@register_dataset("synthetic")
class Synthetic(light.Synthetic):
    """Generated shapes (see `manager.datasets.classes.Synthetic`, which names the classes and
    checks the options); here, the images."""

    def build(self, root, split: str, transform, download: bool, **options) -> Dataset:
        return SyntheticShapes(split, transform, **check_options("synthetic", options, OPTIONS))
