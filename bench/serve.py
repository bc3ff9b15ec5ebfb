"""`mgr serve` under load: throughput, p50/p99 latency and errors over 1, 8 and 64 tasks, against
`mgr predict` per request, in one run. Loopback only; every phase is bounded in requests and time.

A home is made with the Python API (one random backbone, ``--tasks-max`` tasks, each a random
Consolidator delta of the size a trained one has, recorded and promoted as the trainer does), one
server is started on it (``mgr serve``, all deltas resident), and ``--concurrency`` keep-alive
connections send one-image JSON requests:

- ``1 task``: every request for the same task (what a one-task server sees: no switch, no mix);
- ``8`` / ``64 tasks``, ``uniform`` (each request's task drawn uniformly) and ``skewed`` (half the
  requests to one task, the rest uniform), as in bench/multitask.py.

Each answer is checked (status 200, the task asked for); anything else is an error. ``mgr predict``
is timed as a fresh process per request (imports, model build, switch of the live files).
The batches the server formed (mean images per batch, share of mixed-task batches) come from its
``/metrics``.

Every server row also shows the server's CPU time per request (user + system, all its threads,
from /proc), which with a near-free model (``--model deit_tiny_patch16_224:img_size=32,depth=1``)
measures the front end: HTTP, JSON and base64, resolution, decoding, the transform, batching.
``--compare DIR`` runs the same server phases a second time with the code of another checkout
(e.g. ``git worktree add /tmp/before <commit>``), on the same home, in the same run: before and
after side by side.

    .venv/bin/python bench/serve.py [--model deit_tiny_patch16_224] [--requests 400]
        [--concurrency 32] [--seconds 60] [--tasks 1,8,64] [--threads 0] [--schedule auto]
        [--predict-requests 3] [--device cpu] [--compare DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from hardware import hardware_line

ROOT = Path(__file__).resolve().parents[1]


# -- the home ---------------------------------------------------------------------------------


def make_home(home: Path, spec: str, n_tasks: int, groups: int) -> list[str]:
    """``n_tasks`` tasks on one random backbone, each with one promoted Consolidator version."""
    import torch

    from manager.adapters.inject import delta_whole_params, target_linears
    from manager.backbone import build_backbone
    from manager.catalog import open_catalog, tasks
    from manager.delta.delta import ConsolidatorLayer, Delta, DeltaMeta
    from manager.delta.structure import support_numel
    from manager.home import Home
    from manager.registry.backbones import materialise_backbone
    from manager.registry.record import record_version

    h = Home.resolve(home)
    cat = open_catalog(h)
    names = [f"t{i:02d}" for i in range(n_tasks)]
    try:
        model = build_backbone(spec, "random", num_classes=0)
        with cat.session() as s:
            row = materialise_backbone(s, h, model, spec, "random")
            backbone_id, content_hash = row.id, row.content_hash
        for i, name in enumerate(names):
            classes = 10 + (i * 37) % 91
            with cat.session() as s:
                t = tasks.add_task(s, name=name, dataset="synthetic",
                                   class_names=[f"{name}-c{j}" for j in range(classes)],
                                   backbone_spec=spec, weights="random")  # fmt: skip
                t.backbone_id = backbone_id
            gen = torch.Generator().manual_seed(i)
            model.reset_classifier(classes)
            layers = {}
            for lname, lin in target_linears(model):
                shape = tuple(lin.weight.shape)
                n = support_numel(shape, ((groups, False),))
                values = torch.randn(n, generator=gen) * 1e-2
                layers[f"{lname}.weight"] = ConsolidatorLayer(shape, ((groups, False),), values)
            whole = {
                n: p.detach().float() + torch.randn(p.shape, generator=gen) * 1e-2
                for n, p in delta_whole_params(model).items()
            }
            meta = DeltaMeta("consolidator", spec, content_hash, torch.float32, classes)
            record_version(cat, name, Delta(layers, whole, meta), structure=((groups, False),))
    finally:
        cat.close()
    return names


def image_bytes(size: int, seed: int) -> bytes:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# -- the load generator -----------------------------------------------------------------------


class Load:
    """Bounded: ``requests`` in all or ``seconds``, whichever comes first, over ``concurrency``
    keep-alive connections."""

    def __init__(self, port: int, bodies: dict[str, bytes], concurrency: int):
        self.port, self.bodies, self.concurrency = port, bodies, concurrency

    async def run(self, tasks: list[str], requests: int, seconds: float) -> dict:
        latencies: list[float] = []
        errors: list[str] = []
        left = [requests]
        deadline = time.monotonic() + seconds

        async def connection(seed: int) -> None:
            rng = random.Random(seed)
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                while left[0] > 0 and time.monotonic() < deadline:
                    left[0] -= 1
                    task = tasks[rng.randrange(len(tasks))]
                    body = self.bodies[task]
                    head = (
                        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                    )
                    t0 = time.perf_counter()
                    writer.write(head.encode() + body)
                    await writer.drain()
                    status, payload = await read_response(reader)
                    latencies.append(time.perf_counter() - t0)
                    if status != 200:
                        errors.append(f"{status} {payload[:120]!r}")
                    elif json.loads(payload)["task"] != task:
                        errors.append(f"answered {json.loads(payload)['task']} for {task}")
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            finally:
                writer.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(connection(i) for i in range(self.concurrency)))
        wall = time.perf_counter() - t0
        return {"latencies": latencies, "errors": errors, "wall": wall}


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise asyncio.IncompleteReadError(b"", None)
    status = int(status_line.split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        k, _, v = line.decode("latin-1").partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    return status, await reader.readexactly(length)


def mix(names: list[str], n: int, kind: str) -> list[str]:
    """The task of each request is drawn from this list: uniform, or half of them to one task."""
    chosen = names[:n]
    if kind == "skewed" and n > 1:
        return [chosen[0]] * (n - 1) + chosen[1:]  # task 0 drawn with probability 1/2
    return chosen


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(port: int, server: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    """Until /readyz says 200 (a server without /readyz: until it answers at all)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=60):
                return
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"the server did not get ready: {log.read_text()[-2000:]}")


def run_server_phases(
    args: argparse.Namespace,
    tree: str,
    src: Path,
    env: dict,
    names: list[str],
    bodies: dict[str, bytes],
    counts: list[int],
    tmp: Path,
) -> list[tuple]:
    """Start ``mgr serve`` from the code in ``src`` and run every load phase against it."""
    import socket

    rows = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "manager", "serve", "--port", str(port), "--device", args.device,
           "--resident", str(max(counts)), "--max-batch", str(args.max_batch),
           "--max-wait-ms", str(args.max_wait_ms), "--schedule", args.schedule,
           "--threads", str(args.threads)]  # fmt: skip
    log = tmp / f"serve-{port}.log"  # a file, not a pipe: the access log must never block
    tree_env = {**env, "PYTHONPATH": str(src)}
    with open(log, "w") as out:
        server = subprocess.Popen(cmd, env=tree_env, cwd=src, stderr=out, stdout=out)
    try:
        t0 = time.perf_counter()
        wait_ready(port, server, log)
        print(f"{tree}: ready in {time.perf_counter() - t0:.1f} s ({src})", flush=True)
        for line in log.read_text().splitlines():  # the model's own measured cost
            if "forward" in line:
                print(f"  {line.strip()}", flush=True)
        load = Load(port, bodies, args.concurrency)
        asyncio.run(load.run(names, len(names) + args.concurrency, 60))  # warm-up: every task
        kinds = args.kinds.split(",")
        scenarios = [(1, "-")] + [(n, m) for n in counts if n > 1 for m in kinds]
        for n, kind in scenarios:
            before = metrics(port)
            cpu0, mine0 = cpu_seconds(server.pid), time.process_time()
            r = asyncio.run(load.run(mix(names, n, kind), args.requests, args.seconds))
            cpu = cpu_seconds(server.pid) - cpu0
            client = time.process_time() - mine0  # the load generator's own share of the CPU
            after = metrics(port)

            def d(key: str, a: dict = after, b: dict = before) -> float:
                return a.get(key, 0.0) - b.get(key, 0.0)

            lats = r["latencies"]
            batches = d("mgr_batch_size_count")
            mean_batch = d("mgr_batch_size_sum") / batches if batches else float("nan")
            mixed = d('mgr_batches_total{mode="mixed"}') / batches if batches else float("nan")
            name = "one task" if n == 1 else f"{n} tasks, {kind}"
            label = f"mgr serve ({tree}): {name}" if args.compare else f"mgr serve: {name}"
            rows.append((label, n, kind, len(lats), len(r["errors"]),
                         len(lats) / r["wall"], pct(lats, 0.5), pct(lats, 0.99),
                         mean_batch, mixed, cpu * 1e3 / max(1, len(lats)),
                         client * 1e3 / max(1, len(lats))))  # fmt: skip
            for e in r["errors"][:3]:
                print(f"  error: {e}", flush=True)
            print(f"{tree}, {name}: {len(lats)} requests, {len(r['errors'])} errors", flush=True)
    finally:
        server.terminate()
        server.wait(60)
    return rows


def frontend_split(spec: str, img: bytes, body: bytes, repeats: int = 2000) -> list[tuple]:
    """Microseconds per one-image request of each front-end step, in this process (one core)."""
    import timeit

    import torch

    from manager.backbone import build_backbone
    from manager.datasets.transforms import data_config, eval_transform
    from manager.serve import inputs

    model = build_backbone(spec, "random", num_classes=0)
    dc = data_config(model)
    transform = eval_transform(dc["img_size"], dc["mean"], dc["std"])
    image = inputs.decode("a", img)
    probs = torch.softmax(torch.randn(1, 37), -1)
    names = [f"class-{i}" for i in range(37)]

    def answer() -> bytes:
        values, idx = probs.topk(5, dim=-1)
        top = [{"class": names[i], "index": i, "probability": float(v)}
               for v, i in zip(values[0].tolist(), idx[0].tolist(), strict=True)]  # fmt: skip
        return json.dumps({"task": "t", "predictions": [{"image": "a", "top": top}]}).encode()

    steps = [
        ("JSON body + base64 (parse_json)", lambda: inputs.parse_json(body)),
        ("header check (check_sizes)", lambda: inputs.check_sizes([("a", img)], 10**9, 10**9)),
        ("PNG decode to RGB", lambda: inputs.decode("a", img)),
        ("transform (resize, crop, normalise)", lambda: transform(image)),
        ("answer: top-k + JSON", answer),
    ]
    return [(name, timeit.timeit(fn, number=repeats) / repeats * 1e6) for name, fn in steps]


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


# -- main -------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    """The bench's options (the GPU suite fills them with ``parse_args([...])``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny_patch16_224", help="timm spec of the backbone")
    ap.add_argument("--groups", type=int, default=96, help="Consolidator g of every task")
    ap.add_argument("--tasks", default="1,8,64")
    ap.add_argument("--requests", type=int, default=400, help="per phase, at most")
    ap.add_argument("--seconds", type=float, default=60, help="per phase, at most")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--predict-requests", type=int, default=3, help="mgr predict processes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="server's torch threads (0: default)")
    ap.add_argument("--schedule", default="auto", choices=("auto", "switch", "mixed"))
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--keep", action="store_true", help="keep the temporary home")
    ap.add_argument(
        "--compare", metavar="DIR", help="also run the server phases with this checkout"
    )
    ap.add_argument("--split", action="store_true", help="time each front-end step in-process")
    ap.add_argument("--kinds", default="uniform,skewed", help="task mixes beyond one task")
    ap.add_argument(
        "--image-size", type=int, default=0, help="side of the PNG sent (0: the model's default)"
    )
    return ap


def measure(args: argparse.Namespace) -> list[tuple]:
    """Make the home, start `mgr serve` (and ``--compare``'s), run every phase; one row per
    phase (see ``main``)."""
    counts = [int(t) for t in args.tasks.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="mgr-bench-serve-"))
    home = tmp / "home"
    t0 = time.perf_counter()
    names = make_home(home, args.model, max(counts), args.groups)
    print(
        f"home: {len(names)} tasks on {args.model} in {time.perf_counter() - t0:.1f} s", flush=True
    )

    from manager.backbone import build_backbone

    size = (
        args.image_size
        or build_backbone(args.model, "random", num_classes=0).default_cfg["input_size"][-1]
    )
    img = image_bytes(size, 0)
    img_dir = tmp / "images"
    img_dir.mkdir()
    (img_dir / "a.png").write_bytes(img)
    data = base64.b64encode(img).decode()
    bodies = {n: json.dumps({"task": n, "images": [data], "top_k": 5}).encode() for n in names}

    env = {k: v for k, v in os.environ.items() if not k.startswith("MGR_")}
    env["MGR_HOME"] = str(home)
    rows = []

    # mgr predict: a fresh process per request.
    lat = []
    for i in range(args.predict_requests):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "manager", "predict", "--task", names[i % len(names)],
                        "--device", args.device, str(img_dir / "a.png")],
                       env=env, cwd=ROOT, check=True, capture_output=True)  # fmt: skip
        lat.append(time.perf_counter() - t)
    if lat:
        rows.append(("mgr predict (a process per request)", 1, "-", len(lat), 0,
                     len(lat) / sum(lat), pct(lat, 0.5), pct(lat, 0.99), None, None))  # fmt: skip

    if args.split:
        print("\nfront end, per one-image request, in one process (us):")
        for name, us in frontend_split(args.model, img, bodies[names[0]]):
            print(f"| {name} | {us:.0f} |")
        print()
    trees = [("this tree", ROOT)]
    if args.compare:
        trees.insert(0, ("before", Path(args.compare).resolve()))
    for tree, src in trees:
        rows += run_server_phases(args, tree, src, env, names, bodies, counts, tmp)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"home kept at {home}")
    return rows


def main() -> None:
    args = parser().parse_args()
    rows = measure(args)
    print()
    print(hardware_line(args.device))
    threads = args.threads or "default"
    print(
        f"model {args.model}, device {args.device}, server threads {threads}, schedule "
        f"{args.schedule}, --max-batch {args.max_batch}, --max-wait-ms {args.max_wait_ms:g}, "
        f"{args.concurrency} connections, one {args.image_size or 'default-size'} px PNG "
        "(random noise) per request"
    )
    print()
    print(
        "| scenario | requests | errors | req/s | p50 ms | p99 ms | p99/p50 | images/batch "
        "| mixed batches | server CPU ms/req | client CPU ms/req |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, _n, _k, reqs, errs, tput, p50, p99, mb, mixed, *cpu in rows:
        mbs = "-" if mb is None else f"{mb:.1f}"
        mxs = "-" if mixed is None else f"{mixed * 100:.0f}%"
        cps = " | ".join(f"{c:.2f}" for c in cpu) if cpu else "- | -"
        print(f"| {label} | {reqs} | {errs} | {tput:.1f} | {p50 * 1e3:.1f} | {p99 * 1e3:.1f} "
              f"| {p99 / p50:.1f} | {mbs} | {mxs} | {cps} |")  # fmt: skip
    for tree in ("before", "this tree") if args.compare else ("",):
        prefix = f"mgr serve ({tree}):" if tree else "mgr serve:"
        mine = [r for r in rows if r[0].startswith(prefix)]
        one = next((r for r in mine if r[1] == 1), None)
        eight = [r for r in mine if r[1] == 8]
        if one and eight:
            ratios = ", ".join(f"{r[2]} {r[5] / one[5]:.2f}x" for r in eight)
            who = tree or "server"
            print(f"\n{who}: 8 tasks vs one task, throughput: {ratios} (target >= 0.8x)")
    print(f"errors in all: {sum(r[4] for r in rows)} (target 0)")


if __name__ == "__main__":
    main()
