"""The paper's preprocessing: bicubic resize to a square, no crop, no augmentation."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode


def to_rgb(image: Image.Image) -> Image.Image:
    """Grey, CMYK and RGBA files exist in the wild; the backbone wants 3 channels.

    A named function, not a lambda, so the transform pickles into DataLoader workers.
    """
    return image.convert("RGB")


def eval_transform(
    img_size: int, mean: Sequence[float], std: Sequence[float]
) -> transforms.Compose:
    """Bicubic resize to ``img_size x img_size``, to tensor, normalise with the backbone's stats."""
    return transforms.Compose(
        [
            transforms.Lambda(to_rgb),
            transforms.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )


# Training uses the same transform: the recipe has no augmentation.
train_transform = eval_transform


def data_config(model: nn.Module) -> dict:
    """``img_size``, ``mean`` and ``std`` for a timm model, honouring an ``img_size`` override."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    img_size = int(size[0]) if size else int(cfg["input_size"][-1])
    return {"img_size": img_size, "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}


def transform_for(model: nn.Module) -> transforms.Compose:
    """`eval_transform` with the model's own input size, mean and std."""
    return eval_transform(**data_config(model))
