"""Catalog at scale: the listing and report commands on catalogs of 1k, 10k and 100k tasks.

    .venv/bin/python bench/catalog_scale.py [--sizes 1000,10000,100000] [--repeats 3]
        [--db-url postgresql+psycopg://postgres@/bench?host=/tmp&port=55432] [--keep DIR]
        [--whole-only]

Each catalog holds N tasks x 3 versions (rows only: no training, fake artifact paths and hashes,
so every version reads as "missing" on disk), a budget on every 10th task and a global one, one
materialised backbone bound to two thirds of the tasks, and the events adding them all would
have written (one per task, one per version). Rows go in by bulk inserts: SQLAlchemy Core
executemany on SQLite, COPY on PostgreSQL.

Every command runs as a user runs it, ``python -m manager ...`` in a fresh process, once to warm
the caches (the OS's, the parameter-count cache) and then ``--repeats`` times; the table shows
the median wall time and CPU time (user + system: what a busy shared machine does not inflate),
each also less the interpreter's start-up (``python -m manager --version``, measured the same
way). With ``--db-url`` (PostgreSQL, say) the same sizes run there too, after SQLite; the database
is emptied (``DROP SCHEMA public CASCADE``) before each. There the CPU column is the client's
only: the server's work shows in the wall time. Target: every command under 1 s beyond start-up
at 100k tasks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hardware import hardware_line
from sqlalchemy import Connection, Table, TableClause, column, text
from sqlalchemy import table as sa_table

from manager.catalog import open_catalog
from manager.catalog.db import make_engine
from manager.catalog.models import (
    GLOBAL_SCOPE,
    VERSION_DELETED,
    VERSION_READY,
    AdapterVersion,
    Backbone,
    Budget,
    Event,
    Task,
    task_scope,
    utcnow,
)
from manager.home import Home

SPECS = ("deit_tiny_patch16_224:img_size=32,depth=2", "deit_tiny_patch16_224:img_size=32,depth=3")
VERSIONS = 3
CLASSES = [f"class_{i}" for i in range(10)]
CHUNK = 20_000


def _chunks(rows: list[dict], n: int = CHUNK):
    for i in range(0, len(rows), n):
        yield rows[i : i + n]


def _raw(table: Table) -> TableClause:
    """`table` without column types: values go to the driver as given (JSON already encoded),
    which skips SQLAlchemy's per-value processing, most of a bulk insert's time."""
    return sa_table(table.name, *(column(c.name) for c in table.columns))


def _copy(conn: Connection, table: Table, rows: list[dict]) -> None:
    """PostgreSQL's bulk load, COPY, through the driver: an executemany runs one INSERT per row
    on the server (about 10x slower here), and psycopg splits a multi-row VALUES slowly."""
    cols = list(rows[0])
    sql = f"COPY {table.name} ({', '.join(cols)}) FROM STDIN"
    with conn.connection.driver_connection.cursor() as cur, cur.copy(sql) as copy:
        for row in rows:
            copy.write_row([row[c] for c in cols])


def fill(home: Home, url: str, n_tasks: int) -> float:
    """An N-task catalog at `url` (migrated first); returns the seconds the inserts took."""
    open_catalog(home, url).close()  # schema, deployment row
    engine = make_engine(url)
    sqlite = engine.dialect.name == "sqlite"
    # SQLite keeps DateTime as text in SQLAlchemy's format; other drivers take the object.
    now = utcnow().strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else utcnow()
    classes, structure, hyper, empty = (
        json.dumps(x) for x in (CLASSES, [[96, False]], {"epochs": 10}, {})
    )
    t0 = time.perf_counter()
    tasks, versions, budgets, events = [], [], [], []
    for i in range(1, n_tasks + 1):
        name = f"task-{i:06d}"
        tasks.append(
            {
                "id": i,
                "name": name,
                "dataset": "synthetic",
                "data_root": None,
                "num_classes": len(CLASSES),
                "class_names": classes,
                "backbone_spec": SPECS[i % 2],
                "weights": "random",
                "backbone_id": 1 if i % 3 else None,
                "active_version_id": None,
                "created_at": now,
            }
        )
        events.append(
            {
                "at": now,
                "kind": "task_added",
                "task_name": name,
                "version_id": None,
                "details": empty,
            }
        )
        for n in range(1, VERSIONS + 1):
            vid = (i - 1) * VERSIONS + n
            deleted = n == 1 and i % 5 == 0  # some tasks had their oldest version removed
            versions.append(
                {
                    "id": vid,
                    "task_id": i,
                    "number": n,
                    "method": "consolidator",
                    "structure": structure,
                    "hyperparams": hyper,
                    "metrics": f'{{"top1": {80.0 + n}}}',
                    "bytes": 10_000 * n + i % 1000,
                    "content_hash": f"{vid:064x}",
                    "path": f"artifacts/{name}/v{n}.safetensors",
                    "status": VERSION_DELETED if deleted else VERSION_READY,
                    "parent_id": None,
                    "created_at": now,
                }
            )
            events.append(
                {
                    "at": now,
                    "kind": "version_created",
                    "task_name": name,
                    "version_id": vid,
                    "details": f'{{"number": {n}}}',
                }
            )
        if i % 10 == 0:
            budgets.append(
                {"scope": task_scope(i), "task_id": i, "max_bytes": 100_000, "updated_at": now}
            )
    budgets.append({"scope": GLOBAL_SCOPE, "task_id": None, "max_bytes": 10**12, "updated_at": now})
    with engine.begin() as conn:
        conn.execute(
            _raw(Backbone.__table__).insert(),
            {
                "id": 1,
                "timm_name": "deit_tiny_patch16_224",
                "spec": SPECS[1],
                "weights_source": "random",
                "content_hash": "b" * 64,
                "param_count": 5_000_000,
                "bytes": 20_000_000,
                "path": "backbones/" + "b" * 64 + ".safetensors",
                "file_mtime_ns": None,
                "created_at": now,
            },
        )
        for table, rows in (
            (Task.__table__, tasks),
            (AdapterVersion.__table__, versions),
            (Budget.__table__, budgets),
            (Event.__table__, events),
        ):
            if sqlite:
                for chunk in _chunks(rows):
                    conn.execute(_raw(table).insert(), chunk)  # executemany
            else:
                _copy(conn, table, rows)
        # The newest version of each task is its active one (ids were given above).
        conn.execute(text(f"UPDATE tasks SET active_version_id = id * {VERSIONS}"))
        if engine.dialect.name == "postgresql":  # explicit ids leave the sequences behind
            for table in ("tasks", "adapter_versions", "backbones"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"(SELECT max(id) FROM {table}))"
                    )
                )
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    else:
        # VACUUM too: index-only scans need the visibility map a live catalog's autovacuum keeps.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    engine.dispose()
    return time.perf_counter() - t0


def empty_postgres(url: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        conn.exec_driver_sql("CREATE SCHEMA public")
    engine.dispose()


_RUNS = itertools.count()


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(
    args: list[str], env: dict[str, str], repeats: int, cwd: Path | None = None
) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``python -m manager ARGS`` in a fresh process, after one
    warm-up run. CPU (user + system of the child) does not count waiting for a busy machine."""
    walls, cpus = [], []
    for i in range(repeats + 1):
        run = str(next(_RUNS))  # a fresh name for each run of a command that adds a task
        cmd = [sys.executable, "-m", "manager", *(a.replace("{run}", run) for a in args)]
        t, c = time.perf_counter(), _cpu()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=cwd)
        wall, cpu = time.perf_counter() - t, _cpu() - c
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
        if i:
            walls.append(wall)
            cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


COMMANDS = [
    ["task", "list", "--limit", "50"],
    ["task", "list", "--task", "task-0001*", "--json"],
    ["storage"],
    ["storage", "--limit", "50", "--offset", "{mid}"],
    ["budget", "show"],
    ["history", "--limit", "50"],
    ["history", "--task", "{task}"],
    ["versions", "{task}"],
]

# Whole-catalog forms (issue 20): every row of every task, so their cost grows with the catalog
# by design; run up to WHOLE_MAX tasks only. `status` reads the live files (none here). The
# second element is how many rows the form prints per task (for the cost per row), if it grows.
WHOLE: list[tuple[list[str], int | None]] = [
    (["--help"], None),
    (["task", "list"], None),
    (["task", "list", "--json"], 1),
    (["storage", "--json"], VERSIONS),
    (["budget", "show", "--json"], 1),
    (["versions", "{task}", "--json"], None),
    (["status"], None),
    (["status", "--json"], None),
    # A write: each run adds a new task ({run} is the run's number); the classes come from the
    # data-set definition, the backbone's parameters are counted (cached after the first run).
    (
        [
            "task",
            "add",
            "new-{run}",
            "--dataset",
            "synthetic:num_classes=3",
            "--backbone",
            SPECS[0],
        ],
        None,
    ),
    # The same with a weights file for the default backbone: its header is checked against
    # the spec's tensor shapes (shipped with mgr for the default and its kin).
    (["task", "add", "w-{run}", "--dataset", "synthetic", "--weights", "{weights}"], None),
]
WHOLE_MAX = 10_000
DEFAULT_BACKBONE = "vit_base_patch16_224"


def weights_file(root: Path) -> Path:
    """A real .safetensors file with the default backbone's tensor names and shapes, one byte an
    element (86 MB): `task add` reads its header only."""
    import numpy as np
    from safetensors.numpy import save_file

    from manager.arch import arch

    path = root / f"{DEFAULT_BACKBONE}.safetensors"
    if not path.exists():
        shapes = arch(DEFAULT_BACKBONE).tensors
        save_file({k: np.zeros(v, np.uint8) for k, v in shapes.items()}, str(path))
    return path


def run_size(
    backend: str,
    url: str,
    n: int,
    repeats: int,
    root: Path,
    whole_only: bool = False,
    baseline: Path | None = None,
) -> None:
    home = Home(root / f"{backend}-{n}")
    env = {**os.environ, "MGR_HOME": str(home.root), "MGR_DB_URL": url}
    filled = fill(home, url, n)
    if baseline is not None:
        compare(env, n, repeats, baseline)
        return
    start = timed(["--version"], env, repeats)
    print(f"\n{backend}, {n:,} tasks x {VERSIONS} versions (filled in {filled:.1f} s)")
    print(f"  {'command':<44} {'wall s':>7} {'-start':>7} {'CPU s':>7} {'-start':>7} {'us/row':>7}")
    print(f"  {'python -m manager --version':<44} {start[0]:7.3f} {'':>7} {start[1]:7.3f}")
    commands: list[tuple[list[str], int | None]] = (
        [] if whole_only else [(c, None) for c in COMMANDS]
    )
    commands += WHOLE if n <= WHOLE_MAX else []
    if whole_only:
        this = Path(__file__).resolve().parents[1]
        in_process(env, n, repeats, {"this": this})
    weights = weights_file(root)
    for cmd, per_task in commands:
        args = [
            a.format(mid=n // 2, task=f"task-{n // 2:06d}", run="{run}", weights=weights)
            for a in cmd
        ]
        wall, cpu = timed(args, env, repeats)
        # CPU per printed row beyond start-up: what the row loop costs.
        per_row = f"{(cpu - start[1]) / (n * per_task) * 1e6:7.1f}" if per_task else ""
        print(
            f"  {' '.join(args):<44} {wall:7.3f} {wall - start[0]:7.3f} "
            f"{cpu:7.3f} {cpu - start[1]:7.3f} {per_row}",
            flush=True,
        )


# Run inside one interpreter by `in_process`: each command repeats+1 times, the first to
# import what it needs; prints the median CPU seconds of the rest as JSON.
IN_PROCESS = """
import contextlib, io, json, statistics, sys, time
from manager.cli import main
out = {}
for args in json.loads(sys.argv[1]):
    cpus = []
    for i in range(int(sys.argv[2]) + 1):
        t = time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            main.main(args, prog_name="mgr", standalone_mode=False)
        cpus.append(time.process_time() - t)
    out[" ".join(args)] = statistics.median(cpus[1:])
print(json.dumps(out))
"""
IN_PROCESS_FORMS = [(["task", "list", "--json"], 1), (["storage", "--json"], VERSIONS),
                    (["budget", "show", "--json"], 1)]  # fmt: skip


def in_process(env: dict[str, str], n: int, repeats: int, where: dict[str, Path]) -> None:
    """The JSON listings' own cost, imports excluded: CPU seconds per command and per row."""
    forms = [args for args, _ in IN_PROCESS_FORMS]
    got = {}
    for side, root in where.items():
        done = subprocess.run(
            [sys.executable, "-c", IN_PROCESS, json.dumps(forms), str(repeats)],
            env={**env, "PYTHONPATH": str(root)}, cwd=root, capture_output=True, text=True,
            check=True,
        )  # fmt: skip
        got[side] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  in one process (imports done), CPU s and us per row, median of {repeats}:")
    for args, per_task in IN_PROCESS_FORMS:
        key = " ".join(args)
        cells = "  ".join(
            f"{side} {got[side][key]:6.3f} s {got[side][key] / (n * per_task) * 1e6:6.1f} us"
            for side in where
        )
        print(f"  {key:<30} {cells}", flush=True)


def compare(env: dict[str, str], n: int, repeats: int, baseline: Path) -> None:
    """The whole-catalog forms run by the code at `baseline` (another checkout, first on
    PYTHONPATH) and by this one, command by command, so both see the same load: CPU seconds
    beyond ``mgr --help``, as issue 20 states its targets."""
    this = Path(__file__).resolve().parents[1]
    # `python -m` puts the working directory first on sys.path: each runs from its own checkout.
    where = {"before": baseline.resolve(), "after": this}
    envs = {k: {**env, "PYTHONPATH": str(p)} for k, p in where.items()}
    print(f"\n{n:,} tasks x {VERSIONS} versions; CPU s (user + sys), median of {repeats}")
    print(f"  before: {baseline}; after: {this}")
    print(f"  {'command':<44} {'before':>7} {'-help':>7} {'after':>7} {'-help':>7}")
    in_process(env, n, repeats, where)
    helps = {k: timed(["--help"], e, repeats, where[k])[1] for k, e in envs.items()}
    print(f"  {'--help':<44} {helps['before']:7.3f} {'':>7} {helps['after']:7.3f}")
    weights = weights_file(Path(env["MGR_HOME"]).parent)
    for cmd, _ in WHOLE[1:]:
        args = [a.format(task=f"task-{n // 2:06d}", run="{run}", weights=weights) for a in cmd]
        cpu = {k: timed(args, e, repeats, where[k])[1] for k, e in envs.items()}
        b, a = cpu["before"], cpu["after"]
        print(
            f"  {' '.join(args)[:44]:<44} {b:7.3f} {b - helps['before']:7.3f}"
            f" {a:7.3f} {a - helps['after']:7.3f}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="task counts, comma-separated")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per command")
    ap.add_argument(
        "--db-url", help="also run on this (empty, disposable) database, e.g. PostgreSQL"
    )
    ap.add_argument("--no-sqlite", action="store_true", help="only the --db-url database")
    ap.add_argument("--keep", type=Path, help="build the homes here and keep them")
    ap.add_argument(
        "--whole-only",
        action="store_true",
        help=f"only the whole-catalog forms (task list --json, storage --json, budget show "
        f"--json, status, and task add; up to {WHOLE_MAX:,} tasks)",
    )
    ap.add_argument(
        "--baseline",
        type=Path,
        help="a checkout of other code (e.g. `git worktree add /tmp/before COMMIT`): run the "
        "whole-catalog forms with it and with this code, side by side (SQLite only)",
    )
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="mgr-scale-") as tmp:
        root = args.keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        print(hardware_line("cpu"))
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s); median of {args.repeats}")
        for n in [] if args.no_sqlite else sizes:
            home = root / f"sqlite-{n}"
            url = f"sqlite:///{home / 'catalog.db'}"
            run_size("sqlite", url, n, args.repeats, root, args.whole_only, args.baseline)
        if args.db_url:
            for n in sizes:
                empty_postgres(args.db_url)
                name = make_engine(args.db_url).dialect.name
                run_size(name, args.db_url, n, args.repeats, root, args.whole_only)


if __name__ == "__main__":
    main()
