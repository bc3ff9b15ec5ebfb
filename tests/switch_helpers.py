"""Shared by the switcher tests: a home with three trained tasks (built once per run), a fork
server that runs the real ``mgr`` CLI in fresh processes without paying torch's import each time,
and reference merges (W0 + a delta, computed here, independently of the switcher).

The fork server is a Python process that imports the CLI and torch once, then forks one child
per command; the child runs ``manager.cli.main(args)`` exactly as ``python -m manager`` does, with
its own environment and its own stdout/stderr files. Children are real processes: the tests
SIGKILL them at random moments. The server runs no torch computation before forking (so no
thread pool exists to be broken by fork).
"""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import TINY_SPEC, child_env

SERVER = r"""
import json, os, sys, traceback
import torch, timm  # noqa: F401  (imported once, before any fork)
from manager.cli import main
import manager.switch.live, manager.switch.status, manager.switch.predict  # noqa: F401
import manager.train.run, manager.backbone, manager.datasets  # noqa: F401

for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "run":
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                os.environ.update(cmd["env"])
                for fd, name in ((1, cmd["stdout"]), (2, cmd["stderr"])):
                    f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(f, fd)
                    os.close(f)
                sys.stdin = open(os.devnull)
                try:
                    main(cmd["args"], prog_name="mgr")
                    code = 0
                except SystemExit as e:
                    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif cmd["op"] == "wait":
        _, status = os.waitpid(cmd["pid"], 0)
        print(json.dumps({"code": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    def json(self):
        return json.loads(self.stdout)


class ForkServer:
    """Runs ``mgr ARGS`` in forked children of one warm interpreter (see the module docstring)."""

    def __init__(self):
        env = child_env(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.tmp = Path(tempfile.mkdtemp(prefix="mgr-forkserver-"))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=self.tmp,  # a relative output path lands here, never in the checkout
            env=env,
        )
        self.n = 0

    def _ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fork server died")
        return json.loads(line)

    def start(self, home: Path, *args: str, **env: str) -> tuple[int, Path, Path, float]:
        """Fork ``mgr ARGS``; returns (pid, stdout file, stderr file, start time)."""
        self.n += 1
        out, err = self.tmp / f"{self.n}.out", self.tmp / f"{self.n}.err"
        full_env = {"MGR_HOME": str(home), **env}
        t0 = time.perf_counter()
        pid = self._ask(op="run", args=list(args), env=full_env, stdout=str(out), stderr=str(err))
        return pid["pid"], out, err, t0

    def wait(self, started) -> Result:
        pid, out, err, t0 = started
        code = self._ask(op="wait", pid=pid)["code"]
        # A child killed right after the fork may not have opened its output files yet.
        text = [f.read_text() if f.exists() else "" for f in (out, err)]
        return Result(code, text[0], text[1], time.perf_counter() - t0)

    def run(self, home: Path, *args: str, ok: bool = True, **env: str) -> Result:
        res = self.wait(self.start(home, *args, **env))
        if ok and res.returncode != 0:
            raise AssertionError(f"mgr {' '.join(args)} exited {res.returncode}\n{res.stderr}")
        return res

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a loaded machine: its own child, stopped here
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


_SERVER: ForkServer | None = None


def fork_server() -> ForkServer:
    """The one fork server of this test run."""
    global _SERVER
    if _SERVER is None:
        _SERVER = ForkServer()
        atexit.register(_SERVER.close)
    return _SERVER


def fork_mgr(home: Path, *args: str, ok: bool = True, **env: str) -> Result:
    """``mgr ARGS`` against ``home`` in a forked child of the run's warm interpreter; raises
    unless it exits 0 when ``ok`` (the subprocess twin is conftest's ``mgr`` fixture)."""
    return fork_server().run(home, *args, ok=ok, **env)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors on 2 shared cores: one thread is faster and immune to oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the trained home ------------------------------------------------------------------------

# (task, classes, versions): each version a method and, for the consolidator, its structure.
PY_TASKS = {
    "pets3": (
        3,
        [
            ("consolidator", ((4, True), (8, False)), torch.float32),
            ("bitfit_ln", None, torch.float32),
            ("consolidator", ((16, False), (2, True)), torch.bfloat16),
        ],
    ),
    "digits": (
        10,
        [("consolidator", ((3, True),), torch.float32), ("lora", None, torch.float32)],
    ),
}


def _perturbed_delta(base_model, method: str, structure, dtype, seed: int, backbone):
    """A delta as a trained run would make one: the method's trainable tensors moved at random."""
    from manager.delta.delta import DeltaMeta
    from manager.delta.structure import format_structure
    from manager.train.config import TrainConfig
    from manager.train.methods import get_method
    from manager.train.train_adapter import prepare_model

    model = copy.deepcopy(base_model)
    groups = format_structure(structure) if structure else ""
    m = get_method(method)
    prepare_model(model, m, TrainConfig.from_json(dict(method=method, groups=groups, lora_rank=4)))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen) * 2e-2)
    meta = DeltaMeta(method, backbone.spec, backbone.content_hash, dtype, 0)
    return m.export(model, meta)


def add_python_tasks(
    home: Path, tasks_spec=PY_TASKS, bind_to: str = "shapes", spec: str = TINY_SPEC
) -> None:
    """Tasks whose versions are made here (fast), bound to ``bind_to``'s backbone (``spec``)."""
    from manager.backbone import new_head
    from manager.catalog import open_catalog, tasks
    from manager.home import Home
    from manager.registry.backbones import load_backbone
    from manager.registry.record import record_version

    h = Home.resolve(home)
    cat = open_catalog(h)
    try:
        with cat.session() as s:
            row = tasks.get_task(s, bind_to).backbone
            s.expunge(row)
        backbone = load_backbone(h, row, num_classes=0)
        seed = 100
        for name, (n, vers) in tasks_spec.items():
            with cat.session() as s:
                t = tasks.add_task(
                    s,
                    name=name,
                    dataset="synthetic",
                    class_names=[f"{name}-c{i}" for i in range(n)],
                    backbone_spec=spec,
                    weights="random",
                )
                t.backbone_id = row.id
            model = copy.deepcopy(backbone)
            new_head(model, n)
            for method, structure, dtype in vers:
                seed += 1
                delta = _perturbed_delta(model, method, structure, dtype, seed, row)
                # The trainer's own recording path: artifact and row together, then promoted.
                record_version(cat, name, delta, structure=structure, promote=True)
    finally:
        cat.close()


def template_home(base: Path) -> Path:
    """A home with three trained tasks, built once per test run and copied by each test.

    ``shapes`` goes through the real CLI (``task add``, ``train --epochs 1``); ``pets3`` and
    ``digits`` get versions made with the Python API (several methods, structures, dtypes).
    """
    home = base / "switch-template"
    if (home / ".complete").exists():
        return home
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    srv = fork_server()
    srv.run(home, "task", "add", "shapes", "--dataset", "synthetic:per_class=8",
            "--backbone", TINY_SPEC, "--weights", "random")  # fmt: skip
    srv.run(home, "train", "shapes", "--epochs", "1", "--batch-size", "48")
    add_python_tasks(home)
    (home / ".complete").touch()
    return home


def copy_home(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, ignore=shutil.ignore_patterns(".complete"))
    return dest


# -- reference merges ------------------------------------------------------------------------


def w0(home: Path) -> dict[str, torch.Tensor]:
    """The backbone's tensors, read from the materialised file."""
    from safetensors.torch import load_file

    (path,) = (home / "backbones").glob("*.safetensors")
    return load_file(str(path))


def merged(home: Path, base: dict, rel: str | None) -> tuple[dict, dict]:
    """(backbone tensors, head tensors) of a fresh merge: W0 + the delta at ``rel``."""
    from manager.delta.apply import apply
    from manager.delta.delta import Delta

    out = {n: t.clone() for n, t in base.items()}
    if rel is None:
        return out, {}
    delta = Delta.load(home / rel)
    head = {n: t.to(torch.float32) for n, t in delta.whole.items() if n not in base}
    live = {**out, **{n: torch.empty_like(t) for n, t in head.items()}}
    apply(live, base, delta)
    return {n: live[n] for n in base}, {n: live[n] for n in head}


def live_dir(home: Path, backbone_hash: str | None = None) -> Path:
    """``<home>/live/<hash>/``: the given backbone's live folder, or the one there is."""
    if backbone_hash is not None:
        return home / "live" / backbone_hash[:16]
    (folder,) = [p for p in (home / "live").iterdir() if p.is_dir()]
    return folder


def live_file(home: Path, name: str = "backbone", backbone_hash: str | None = None) -> Path:
    """``<home>/live/<hash>/{backbone,head}.safetensors`` (see `live_dir`)."""
    return live_dir(home, backbone_hash) / f"{name}.safetensors"


def sql(home: Path, query: str, *args) -> list:
    """Run ``query`` on the home's SQLite catalog with sqlite3 itself (no manager code, no
    recovery), committed; its rows."""
    con = sqlite3.connect(home / "catalog.db", timeout=30)
    try:
        with con:
            return con.execute(query, args).fetchall()
    finally:
        con.close()


def catalog_versions(home: Path) -> dict[str, str]:
    """``{"task@N": artifact path}`` for every ready version (read with sqlite3 directly)."""
    rows = sql(
        home,
        "SELECT t.name, v.number, v.path FROM adapter_versions v JOIN tasks t "
        "ON t.id = v.task_id WHERE v.status = 'ready'",
    )
    return {f"{t}@{n}": p for t, n, p in rows}


def deployment(home: Path) -> dict:
    """The deployment row, read with sqlite3 (no manager code, no recovery)."""
    ((state, vid, pending, task, number),) = sql(
        home,
        "SELECT d.state, d.version_id, d.pending_version_id, t.name, v.number "
        "FROM deployment d LEFT JOIN adapter_versions v ON v.id = d.version_id "
        "LEFT JOIN tasks t ON t.id = v.task_id ORDER BY d.backbone_id IS NULL, d.id LIMIT 1",
    )
    return {
        "state": state,
        "version_id": vid,
        "pending_id": pending,
        "live": f"{task}@{number}" if task else None,
    }


def with_second_backbone(home: Path, spec: str, tasks_spec, carrier: str = "carrier") -> Path:
    """``home`` plus ``tasks_spec`` on a second backbone ``spec`` (random W0), bound through an
    untrained task ``carrier``: a home with two live-able backbones, built in-process (fast)."""
    from manager.backbone import build_backbone
    from manager.catalog import open_catalog, tasks
    from manager.home import Home
    from manager.registry.backbones import materialise_backbone

    h = Home.resolve(home)
    cat = open_catalog(h)
    try:
        other = build_backbone(spec, "random")
        with cat.session() as s:
            row = materialise_backbone(s, h, other, spec, "random")
            tasks.add_task(
                s, name=carrier, dataset="synthetic", class_names=["a", "b"], backbone_spec=spec
            )
            tasks.get_task(s, carrier).backbone_id = row.id
    finally:
        cat.close()
    add_python_tasks(home, tasks_spec, carrier, spec=spec)
    return home
