"""What one-writer-at-a-time costs on PostgreSQL: write transactions with and without the
writers' advisory lock, side by side, and SQLite (BEGIN IMMEDIATE) for reference.

Each transaction is what a small command does: read the global budget and set it, recording a
``budget_set`` event. Starts a throw-away server with tests/pg.py (PostgreSQL binaries needed).

    .venv/bin/python bench/catalog_writes.py            # 300 transactions per row
    .venv/bin/python bench/catalog_writes.py --n 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from hardware import hardware_line

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from pg import PgServer, find_bindir, missing_reason  # noqa: E402

from manager.catalog import budgets, open_catalog  # noqa: E402
from manager.catalog.db import BEGIN_OPTION  # noqa: E402
from manager.home import Home  # noqa: E402


def one_ms(engine, i: int) -> float:
    from manager.catalog.db import session_scope

    t0 = time.perf_counter()
    with session_scope(engine) as s:
        budgets.get_budget(s)
        budgets.set_budget(s, 1_000_000 + i)
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300)
    args = ap.parse_args()
    reason = missing_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    server = PgServer(find_bindir()).start()
    tmp = Path(tempfile.mkdtemp(prefix="mgr-bench-"))
    try:
        pg = open_catalog(Home(tmp / "pg"), url=server.create_database("bench"))
        sqlite = open_catalog(Home(tmp / "sqlite"), url=f"sqlite:///{tmp / 'c.db'}")
        engines = {
            "PostgreSQL, advisory lock": pg.engine,
            "PostgreSQL, no lock": pg.engine.execution_options(**{BEGIN_OPTION: "NONE"}),
            "SQLite, BEGIN IMMEDIATE": sqlite.engine,
        }
        times: dict[str, list[float]] = {k: [] for k in engines}
        for i in range(args.n):  # interleaved one by one: the machine's load drifts
            for label, engine in engines.items():
                times[label].append(one_ms(engine, i))
        pg.close()
        sqlite.close()
    finally:
        server.stop()
    print(hardware_line("cpu"))
    print(
        f"{args.n} write transactions each (read + set the global budget, one event), interleaved\n"
    )
    print(f"{'catalog':<28}{'median ms':>10}{'p90 ms':>9}")
    for label, t in times.items():
        print(f"{label:<28}{statistics.median(t):>10.2f}{statistics.quantiles(t, n=10)[8]:>9.2f}")
    with_lock = statistics.median(times["PostgreSQL, advisory lock"])
    ratio = with_lock / statistics.median(times["PostgreSQL, no lock"])
    print(f"\nPostgreSQL with the lock / without: {ratio:.2f}x")


if __name__ == "__main__":
    main()
