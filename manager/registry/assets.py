"""Where the demo's data and weights come from: a folder given, ``../shared/assets`` beside a
checkout, a download into ``<home>/cache`` (DeiT-tiny from the hub, Flowers-102 and Pets through
torchvision), else nothing (the demo then generates its shapes data set).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import manager
from manager.errors import NotFound
from manager.store.fs import Store

WEIGHTS = "deit_tiny_patch16_224.safetensors"
FLOWERS, PETS = "flowers-102", "oxford-iiit-pet"
HUB = "https://huggingface.co"


@dataclass(frozen=True)
class Source:
    """Where the demo's data and weights come from; ``data`` None means the generated shapes."""

    data: Path | None
    weights: Path | None
    why: str

    def describe(self) -> str:
        if self.data is None:
            return f"demo data: generated shapes and a tiny random ViT ({self.why})"
        return (
            f"demo data: Flowers-102, Oxford-IIIT Pet and pretrained DeiT-tiny from {self.data} "
            f"({self.why})"
        )


def checkout_assets() -> Path | None:
    """``../shared/assets`` beside the repository, when mgr runs from a checkout; else None.

    An installed mgr (site-packages) has no checkout, and nothing beside site-packages is looked at.
    """
    repo = Path(manager.__file__).resolve().parents[1]
    if not ((repo / "pyproject.toml").is_file() and (repo / "migrations").is_dir()):
        return None
    return repo.parent / "shared" / "assets"


def _has_assets(folder: Path) -> bool:
    return all((folder / p).exists() for p in (WEIGHTS, FLOWERS, PETS))


def download_assets(store: Store) -> Source:
    """Fetch DeiT-tiny (timm) and Flowers-102 and Pets (torchvision) into ``<home>/cache``."""
    import safetensors.torch
    import timm

    from manager.datasets import create_dataset

    weights = store.confine(store.cache / "weights" / WEIGHTS)
    if not weights.is_file():
        # One quick request first: the hub client retries a dead network for a minute or more.
        import urllib.request

        urllib.request.urlopen(HUB, timeout=10).close()
        hub = store.mkdir(store.cache / "hub")
        model = timm.create_model("deit_tiny_patch16_224", pretrained=True, cache_dir=hub)
        with store.atomic(weights) as tmp:
            safetensors.torch.save_file(model.state_dict(), str(tmp))
    data = store.mkdir(store.cache / "datasets")
    for name in ("flowers102", "pets"):
        create_dataset(name, data, "test", download=True)  # a no-op once the files are there
    return Source(data, weights, f"downloaded into {store.cache}")


def choose_source(store: Store, assets: Path | None, offline: bool, download: bool) -> Source:
    """Pick the data: explicit flags first, then local assets, then the network, then shapes."""
    if offline:
        return Source(None, None, "--offline")
    if assets is not None:
        if not _has_assets(assets):
            raise NotFound(
                f"assets folder {assets}: expected {WEIGHTS}, {FLOWERS}/ and {PETS}/ there",
                hint="check --assets",
            )
        return Source(assets, assets / WEIGHTS, "--assets")
    beside = None if download else checkout_assets()
    if beside is not None and _has_assets(beside):
        return Source(beside, beside / WEIGHTS, "found beside the checkout")
    why = "--download" if download else "no local assets"
    try:
        return download_assets(store)
    except ImportError:
        raise  # a broken install is not a network problem
    except Exception as e:  # network, hub and archive errors alike: the demo still runs
        lines = str(e).strip().splitlines()
        msg = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        return Source(None, None, f"{why}, and the download failed: {msg}")
