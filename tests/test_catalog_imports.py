"""Commands that only read or write the catalog import neither torch, torchvision nor timm.

They answer in a blink only while that holds (torch alone is seconds of CPU to import); a module
import added at the top of a CLI module, or a catalog helper that reaches for the model code,
fails here, naming the first command that pulled them in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, TINY_SPEC

from manager.arch import arch
from manager.catalog import aliases, budgets, open_catalog, tasks, versions
from manager.catalog.paramcount import param_info
from manager.home import Home
from manager.store.fs import Store

HEAVY = ("torch", "torchvision", "timm")
DEIT = "deit_tiny_patch16_224"

# In order: each runs in the same process, after the ones before it.
COMMANDS = [
    ["task", "list"],
    ["task", "list", "--json"],
    ["task", "show", "pets"],
    ["task", "show", "pets", "--json"],
    ["versions", "pets"],
    ["versions", "pets@stable", "--json"],
    ["storage"],
    ["storage", "--json"],
    ["budget", "show"],
    ["budget", "show", "--json"],
    ["budget", "set", "1GB", "--task", "pets"],
    ["alias", "list", "pets"],
    ["alias", "set", "pets", "candidate", "1"],
    ["alias", "remove", "pets", "candidate"],
    ["tag", "pets@1", "good"],
    ["promote", "pets@2"],
    ["rollback", "pets"],
    ["history"],
    ["history", "--task", "pets", "--json"],
    ["status"],  # nothing live here; tests/test_status_fast.py checks a home with live files
    ["status", "--json"],
    ["db", "current"],
    ["db", "upgrade"],
    ["task", "remove", "cats", "--yes"],
    # task add reads class names from the data set's definition or folders, without torch; the
    # backbone's parameters were counted (and cached) by _fill, as a first task add does.
    ["task", "add", "shapes", "--dataset", "synthetic:num_classes=3", "--backbone", TINY_SPEC],
    ["task", "add", "flowers", "--dataset", "flowers102", "--json"],
    ["task", "add", "folder", "--dataset", "imagefolder", "--root", "{folder}"],
    # --weights: the file's header against the spec's shapes, shipped (the default's kin) or
    # cached in the home (TINY_SPEC, by _fill): no timm either.
    ["task", "add", "deit", "--dataset", "synthetic", "--backbone", DEIT, "--weights", "{deit}"],
    [
        "task",
        "add",
        "tiny",
        "--dataset",
        "synthetic",
        "--backbone",
        TINY_SPEC,
        "--weights",
        "{tiny}",
    ],
]

PROBE = """
import json, sys
from manager.cli import main

HEAVY = {heavy!r}
report = []
for args in json.loads(sys.argv[1]):
    try:
        code = main.main(args, prog_name="mgr", standalone_mode=False)
    except SystemExit as exc:
        code = exc.code
    report.append([args, code or 0, sorted(m for m in HEAVY if m in sys.modules)])
print(json.dumps(report))
"""


def _fill(home: Path) -> None:
    """Two tasks, two versions of one (fake artifacts: rows and bytes only), an alias, a budget."""
    cat = open_catalog(Home(home))
    store = Store.of(Home(home))
    param_info(TINY_SPEC, store)  # as `mgr task add --backbone TINY_SPEC` does: counted, cached
    try:
        with cat.session() as s:
            pets = tasks.add_task(
                s, name="pets", dataset="synthetic", class_names=["a", "b"], backbone_spec=TINY_SPEC
            )
            # The default backbone (vit_base_patch16_224), which `task add` does not count.
            tasks.add_task(s, name="cats", dataset="synthetic", class_names=["a", "b"])
            for n in (1, 2):
                path = store.artifact("pets", n)
                store.write_bytes(path, b"\0" * (100 * n))
                v = versions.add_version(
                    s,
                    pets,
                    method="consolidator",
                    structure=[[96, False]],
                    bytes=100 * n,
                    content_hash="0" * 64,
                    path=store.rel(path),
                    metrics={"top1": 50.0 + n},
                )
                if n == 1:
                    versions.promote(s, pets, v)
            aliases.set_alias(s, pets, "stable", v)
            budgets.set_budget(s, 10_000, None)
    finally:
        cat.close()


def weights_file(path: Path, spec: str) -> Path:
    """A real .safetensors file with the tensor names and shapes of ``spec``'s backbone (one
    byte an element: only the header is read), and a head, as checkpoints carry."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {k: np.zeros(v, np.uint8) for k, v in arch(spec).tensors.items()}
    save_file({**tensors, "head.weight": np.zeros((10, 4), np.uint8)}, str(path))
    return path


def test_catalog_commands_import_neither_torch_nor_timm(home: Path, tmp_path: Path) -> None:
    _fill(home)
    for c in ("cat", "dog"):
        (tmp_path / "images" / c).mkdir(parents=True)
    files = {
        "folder": tmp_path / "images",
        "deit": weights_file(tmp_path / "deit.safetensors", DEIT),
        "tiny": weights_file(tmp_path / "tiny.safetensors", TINY_SPEC),
    }
    commands = [[a.format(**files) for a in args] for args in COMMANDS]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGR_")}
    env["MGR_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(commands)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report) == len(COMMANDS)
    failed = [(args, code) for args, code, _ in report if code != 0]
    assert not failed, f"commands failed: {failed}\n{proc.stderr}"
    heavy = [(args, mods) for args, _, mods in report if mods]
    assert not heavy, f"first command to import {heavy[0][1]}: mgr {' '.join(heavy[0][0])}"
    cat = open_catalog(Home(home))  # the writes really ran
    try:
        with cat.session(write=False) as s:
            assert tasks.find_task(s, "cats") is None
            pets = tasks.get_task(s, "pets")
            assert budgets.get_budget(s, pets) == 10**9
            assert pets.active_version.number == 1  # promoted to 2, rolled back
            assert tasks.get_task(s, "shapes").num_classes == 3
            assert tasks.get_task(s, "flowers").num_classes == 102
            assert tasks.get_task(s, "folder").class_names == ["cat", "dog"]
            assert (tasks.get_task(s, "tiny").weights or "").endswith("tiny.safetensors")
    finally:
        cat.close()


def test_the_probe_sees_a_heavy_import(home: Path) -> None:
    """The same probe flags a command that does import torch (the check is not vacuous)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MGR_")}
    env["MGR_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps([["switch", "--none"]])],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (args, _code, mods), *_ = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "torch" in mods, (args, mods)  # mgr switch loads the live-file code, torch's
