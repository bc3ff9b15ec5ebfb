"""Image folders for the continual-adaptation tests: synthetic shapes written as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from manager.datasets.synthetic import render

SPLITS = {"train": 0, "val": 1, "test": 2}


def write_class(root: Path, name: str, shape: int, counts: dict[str, int], seed: int = 0) -> None:
    """``root/<split>/<name>/*.png``: ``counts[split]`` images of synthetic class ``shape``."""
    for split, n in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rng = np.random.default_rng((seed, SPLITS[split], shape, i))
            Image.fromarray(render(shape, 32, rng), "RGB").save(folder / f"{i:03d}.png")


def write_folder(root: Path, classes: dict[str, int], counts: dict[str, int] | None = None) -> Path:
    """A split tree with ``classes`` (folder name -> synthetic class)."""
    counts = counts or {"train": 8, "val": 4, "test": 4}
    for name, shape in classes.items():
        write_class(root, name, shape, counts)
    return root


def synthetic_and_folder_tasks(
    tmp_path: Path, synthetic: str, folder: str, classes: dict[str, int]
) -> tuple[Path, Path]:
    """A home (``tmp_path/home``) with two tasks added through the CLI on the tiny backbone
    (random W0): ``synthetic`` (4 images a class) and ``folder``, an image folder of ``classes``
    at ``tmp_path/pics``. Returns (home, pictures folder)."""
    from conftest import TINY_SPEC
    from switch_helpers import fork_mgr

    home = tmp_path / "home"
    home.mkdir()
    add = ("--backbone", TINY_SPEC, "--weights", "random")
    fork_mgr(home, "task", "add", synthetic, "--dataset", "synthetic:per_class=4", *add)
    pics = write_folder(tmp_path / "pics", classes)
    fork_mgr(home, "task", "add", folder, "--dataset", "imagefolder", "--root", str(pics), *add)
    return home, pics
