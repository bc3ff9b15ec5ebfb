"""Training throughput and peak memory per method, through `mgr train`'s own step.

    .venv/bin/python bench/train_speed.py            # CPU: DeiT-tiny 112 px, batch 64, fp32
    .venv/bin/python bench/train_speed.py --precision bf16 --rounds 4
    python bench/train_speed.py --device cuda --img-size 224 --batch 256 --compile   # bf16 on CUDA
    python bench/train_speed.py --device cuda --precision fp32 --img-size 224 --batch 64

The same code path as `mgr train`: each method's model is made by ``prepare_model``, a synthetic
uint8 split is put on the device once (``ImageTensors.to``) and batches are gathered and normalised
there (``ImageTensors.epoch``), and each step is ``TrainStep`` (autocast precision, GradScaler for
fp16, fused AdamW on CUDA, foreach on the CPU, optional torch.compile): exactly the calls of
``manager.train.loop.fit``. As `mgr train` does for its img/s, the first step of a batch shape
(kernel set-up, compilation) is left out and the clock is read between device synchronisations,
so both report images / seconds over steady-state steps and agree for the same settings.

Every method runs in a worker process of its own, all started (and warmed up) first; then each
round runs ``--steps`` steps of every worker in turn, so machine noise hits all methods alike.
img/s is all timed images over all timed seconds. Peak memory is per worker, hence per method:
on CUDA ``torch.cuda.max_memory_allocated`` (weights, gradients, optimizer state, activations,
the uint8 split); on the CPU the growth of the worker's peak resident set (``ru_maxrss``, a
high-water mark, which is why each method needs a process of its own) from just before its model
is built. All workers hold their memory at once, so on a GPU pick rows (``--methods``) for a large
model and batch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time

from hardware import hardware_line

ROWS = [
    ("full fine-tuning", "full", {}),
    ("BitFit + LN", "bitfit_ln", {}),
    ("LoRA r=8", "lora", {}),
    ("Consolidator 1 branch", "consolidator", {"drop_path": 0.0}),
    ("Consolidator 1 branch, dp 0.2", "consolidator", {"drop_path": 0.2}),
    (
        "Consolidator 2 branches (2g, g s), dp 0.2",
        "consolidator",
        {"groups": "*2", "drop_path": 0.2},
    ),
]


def _rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class Prepared:
    """One method's model, optimizer and `TrainStep`, warmed up (the first step is done)."""

    def __init__(self, step, batches, total, device, batch: int):
        self.step, self.batches, self.total, self.device, self.batch = (
            step, batches, total, device, batch,
        )  # fmt: skip

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` steady-state steps, between device synchronisations."""
        from manager.train.step import synchronize

        synchronize(self.device)
        t = time.perf_counter()
        for _ in range(steps):
            self.total += self.step(next(self.batches))
        synchronize(self.device)
        return time.perf_counter() - t


def prepare(
    row: int,
    model: str,
    img_size: int,
    batch: int,
    device: str,
    precision: str | None,
    compile: bool,
    spec_extra: str = "",
) -> Prepared:
    """Build ``ROWS[row]``'s method as `mgr train` does and take its warm-up step.

    Raises ``MgrError`` (e.g. --compile without a compiler) with the trainer's own message.
    ``spec_extra`` adds backbone options (``depth=1`` for smoke runs).
    """
    import timm  # noqa: F401  (imported before the baseline: its import is not the method's)
    import torch

    from manager.backbone import build_backbone
    from manager.delta.structure import format_structure
    from manager.device import resolve_device, resolve_precision
    from manager.train.config import TrainConfig
    from manager.train.data import ImageTensors, Normalise
    from manager.train.groups import param_groups
    from manager.train.methods import get_method
    from manager.train.step import TrainStep, make_optimizer
    from manager.train.train_adapter import prepare_model

    _label, name, over = ROWS[row]
    dev = resolve_device(device)
    spec = f"{model}:img_size={img_size}" + (f",{spec_extra}" if spec_extra else "")
    net = build_backbone(spec, "random", num_classes=100)
    g = net.embed_dim // 2  # two input channels per group, as the paper's release
    structure = ((g * 2, False), (g, True)) if over.get("groups") == "*2" else ((g, False),)
    cfg = TrainConfig.from_json(
        dict(
            method=name,
            **{**over, "groups": format_structure(structure)},
            batch_size=batch,
            precision=precision,
            compile=compile,
        )
    )
    prepare_model(net, get_method(name), cfg)  # the trainer's own checks and surgery
    net.to(dev).train()
    gen = torch.Generator().manual_seed(0)
    n = 4 * batch  # whole batches only: one shape, one warm-up
    data = ImageTensors(
        torch.randint(0, 256, (n, 3, img_size, img_size), dtype=torch.uint8, generator=gen),
        torch.randint(0, 100, (n,), generator=gen),
    ).to(dev)
    norm = Normalise(torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225]), dev)
    opt = make_optimizer(param_groups(net, 1e-4), 1e-4)
    dtype = resolve_precision(precision, dev)
    step = TrainStep(net, opt, dtype=dtype, device=dev, compile=compile)
    batches = itertools.chain.from_iterable(
        data.epoch(batch, norm, generator=gen) for _ in itertools.count()
    )
    total = torch.zeros((), dtype=torch.float64, device=dev)
    total += step(next(batches))  # warm-up: kernel set-up, compilation
    prepared = Prepared(step, batches, total, dev, batch)
    prepared.run(0)  # synchronise: the warm-up is done
    return prepared


def worker(args: argparse.Namespace) -> None:
    """One method: build, warm up, then answer 'run' with seconds and 'stop' with peak memory."""
    import timm  # noqa: F401  (imported before the baseline: its import is not the method's)
    import torch

    from manager.errors import MgrError

    if args.threads:
        torch.set_num_threads(args.threads)
    base_rss = _rss_bytes()
    try:
        prepared = prepare(args.worker, args.model, args.img_size, args.batch, args.device,
                           args.precision, args.compile)  # fmt: skip
    except MgrError as e:
        print(f"error: {ROWS[args.worker][0]}: {e}", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        print(prepared.run(args.steps), flush=True)
    device = prepared.device
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = _rss_bytes() - base_rss
    print(json.dumps({"peak": peak, "loss": prepared.total.item()}), flush=True)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="[default: as mgr train]")
    ap.add_argument("--compile", action="store_true", help="torch.compile, as mgr train --compile")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=0, help="steps per round [default: 1 CPU, 20 GPU]")
    ap.add_argument("--methods", default="", help="comma-separated row numbers (default: all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.steps:
        args.steps = 20 if args.device.startswith("cuda") else 1
    if args.worker >= 0:
        worker(args)
        return
    rows = [int(i) for i in args.methods.split(",")] if args.methods else range(len(ROWS))
    argv = sys.argv[1:]
    workers = {}
    for i in rows:  # started one after the other: warm-ups (compilation) do not overlap
        p = subprocess.Popen(
            [sys.executable, __file__, *argv, "--worker", str(i), "--steps", str(args.steps)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = p.stdout.readline().strip()
        if line != "ready":
            sys.exit(line or f"worker {ROWS[i][0]!r} exited {p.wait()}")
        workers[i] = p
    times: dict[int, list[float]] = {i: [] for i in workers}
    for _ in range(args.rounds):
        for i, p in workers.items():
            p.stdin.write("run\n")
            p.stdin.flush()
            times[i].append(float(p.stdout.readline()))
    peaks = {}
    for i, p in workers.items():
        p.stdin.write("stop\n")
        p.stdin.flush()
        peaks[i] = json.loads(p.stdout.readline())["peak"]
        p.wait()

    def img_s(i: int) -> float:
        return args.batch * args.steps * len(times[i]) / sum(times[i])

    import torch

    from manager.device import precision_name

    prec = precision_name(args.precision, torch.device(args.device))
    full = img_s(0) if 0 in times else None
    mem = "peak CUDA memory allocated" if args.device.startswith("cuda") else "peak RSS growth"
    print()
    print(hardware_line(args.device))
    print(
        f"{args.model} {args.img_size}px, batch {args.batch}, {args.device}, {prec}"
        f"{', compiled' if args.compile else ''}, {args.rounds} interleaved rounds of "
        f"{args.steps} step(s), {torch.get_num_threads()} threads here"
    )
    print(f"| method | img/s | ms / step (median) | vs full fine-tuning | {mem} |")
    print("|---|---|---|---|---|")
    for i in workers:
        ms = 1e3 * statistics.median(times[i]) / args.steps
        ratio = f"{img_s(i) / full:.2f}x" if full else "-"
        print(f"| {ROWS[i][0]} | {img_s(i):.0f} | {ms:.0f} | {ratio} | {_mib(peaks[i])} |")


if __name__ == "__main__":
    main()
