"""The wheel is what a user installs: it must carry the migrations and the data-set definitions."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ROOT

tomllib = pytest.importorskip("tomllib")

# Mapped from the repository's top-level folders by pyproject's package-dir.
MAPPED = {
    "manager._migrations": "migrations",
    "manager._migrations.versions": "migrations/versions",
}
MAPPED["manager._data"] = "data"


def _manager_packages() -> set[str]:
    return {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "manager").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }


def test_pyproject_lists_every_package():
    # The list is explicit (package-dir mapping needs it): a new subpackage must be added there.
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    assert listed == _manager_packages() | set(MAPPED)


def _copy_tree(dest: Path) -> Path:
    """The checkout without build outputs, environments or downloaded data sets."""
    skip = {".git", ".venv", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        out = {n for n in names if n in skip or n.endswith(".egg-info")}
        if Path(folder) == ROOT / "data":
            out |= {n for n in names if (Path(folder) / n).is_dir()}
        return out

    shutil.copytree(ROOT, dest, ignore=ignore)
    return dest


@pytest.mark.slow
def test_wheel_ships_migrations_and_data(tmp_path: Path):
    src = _copy_tree(tmp_path / "src")
    # A data set downloaded into the checkout's data/ must not end up in the wheel.
    (src / "data" / "flowers-102" / "jpg").mkdir(parents=True)
    (src / "data" / "flowers-102" / "jpg" / "image_00001.jpg").write_bytes(b"\xff\xd8")
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(src)],
        check=True,
        timeout=600,
    )
    (wheel,) = out.glob("mgr-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())

    migrations = {f"manager/_migrations/{p.name}" for p in (ROOT / "migrations").glob("*.*")}
    versions = {
        f"manager/_migrations/versions/{p.name}"
        for p in (ROOT / "migrations/versions").glob("*.py")
    }
    assert "manager/_migrations/env.py" in migrations and len(versions) >= 1
    assert migrations | versions <= names, sorted((migrations | versions) - names)
    data = {f"manager/_data/{p.name}" for p in (ROOT / "data").iterdir() if p.is_file()}
    assert {"manager/_data/flowers102.json", "manager/_data/pets.json"} <= data <= names
    assert not [n for n in names if n.startswith("manager/_data/flowers-102")]
    # Every module of the package is there, and nothing at the top level but manager/.
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "manager").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert "manager/archs.json" in names  # the shipped architectures (manager/arch.py)
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"manager"}
