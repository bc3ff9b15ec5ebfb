"""Mixed-task batches: `MultiTaskModel` (x @ W0 once + each sample's grouped delta) against the
merged single-task model, at one batch size, over 1, 8 and 64 tasks. One run, one table.

Each task: a Consolidator delta with one branch (``--groups``; 96 = two input channels per group on
DeiT-tiny, 384 on ViT-B) on every qkv/proj/fc1/fc2, random biases, LayerNorms and a head of 10 to
100 classes. Samples are assigned to tasks uniformly (``--mix uniform``) or skewed (half the
batch to task 0, the rest uniform). Timings are interleaved (merged, then each multi-task model,
repeated) so machine noise hits all of them alike; the figure is the median.

    .venv/bin/python bench/multitask.py [--model deit_tiny_patch16_224] [--batch 64]
        [--tasks 1,8,64] [--device cpu] [--precision fp32] [--threads 1] [--reps 5] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import timm
import torch
from hardware import hardware_line

from manager.adapters.inject import delta_whole_params, target_linears
from manager.adapters.multitask import MultiTaskModel
from manager.delta.delta import ConsolidatorLayer, Delta, DeltaMeta
from manager.delta.structure import support_numel

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_delta(model: torch.nn.Module, g: int, classes: int, seed: int) -> Delta:
    """A random delta with the structure and size of a trained one (built on the CPU)."""
    gen = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(model).cpu()
    m.reset_classifier(classes)
    layers = {}
    for name, lin in target_linears(m):
        shape = tuple(lin.weight.shape)
        n = support_numel(shape, ((g, False),))
        values = torch.randn(n, generator=gen) * 1e-2
        layers[f"{name}.weight"] = ConsolidatorLayer(shape, ((g, False),), values)
    whole = {
        n: p.detach().float() + torch.randn(p.shape, generator=gen) * 1e-2
        for n, p in delta_whole_params(m).items()
    }
    return Delta(layers, whole, DeltaMeta("consolidator", "bench", "x", torch.float32, classes))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(
    model: str,
    groups: int,
    batch: int,
    counts: list[int],
    device: str | torch.device,
    dtype: torch.dtype,
    reps: int,
    compile: bool = False,
    mix: str = "uniform",
    compile_backend: str = "inductor",
    **model_kwargs,
) -> dict[str, list[float]]:
    """Seconds of each timed pass, per model: ``merged`` and ``"<n> tasks"`` for n in ``counts``,
    interleaved so machine noise hits all of them alike. ``model_kwargs`` go to timm (e.g.
    ``depth=1, img_size=32`` for smoke runs)."""
    device = torch.device(device)
    base = timm.create_model(model, pretrained=False, num_classes=0, **model_kwargs).eval()
    deltas = [make_delta(base, groups, 10 + (i * 37) % 91, i) for i in range(max(counts))]
    merged = copy.deepcopy(base)
    merged.reset_classifier(100)
    merged = merged.to(device, dtype).eval()
    models = {
        n: MultiTaskModel(copy.deepcopy(base).to(device, dtype), deltas[:n]).eval() for n in counts
    }
    if compile:
        merged = torch.compile(merged, backend=compile_backend)
        models = {n: torch.compile(m, backend=compile_backend) for n, m in models.items()}
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, *base.patch_embed.img_size, generator=gen)
    x = x.to(device, dtype)
    ids = {}
    for n in counts:
        uniform = torch.randint(0, n, (batch,), generator=gen)
        if mix == "skewed":
            uniform[: batch // 2] = 0
        ids[n] = uniform.to(device)

    runs = {"merged": lambda: merged(x)} | {
        f"{n} tasks": (lambda n=n: models[n](x, ids[n])) for n in counts
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    with torch.inference_mode():
        for fn in runs.values():  # warm-up
            fn()
        for _ in range(reps):
            for k, fn in runs.items():
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[k].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--groups", type=int, default=96)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--tasks", default="1,8,64")
    ap.add_argument("--mix", choices=("uniform", "skewed"), default="uniform")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", choices=tuple(DTYPES), default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile every model first")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.precision]
    counts = [int(t) for t in args.tasks.split(",")]
    times = measure(args.model, args.groups, args.batch, counts, device, dtype, args.reps,
                    args.compile, args.mix)  # fmt: skip
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(hardware_line(args.device))
    print(
        f"{args.model}, batch {args.batch}, g={args.groups}, {args.precision}, {args.mix} mix, "
        f"{'compiled, ' if args.compile else ''}"
        f"{what}, threads {torch.get_num_threads()}, median of {args.reps}"
    )
    ref = args.batch / statistics.median(times["merged"])
    print(f"{'model':<16}{'img/s':>10}{'x merged':>10}")
    for k, ts in times.items():
        ips = args.batch / statistics.median(ts)
        print(f"{k:<16}{ips:>10.1f}{ips / ref:>10.2f}")


if __name__ == "__main__":
    main()
