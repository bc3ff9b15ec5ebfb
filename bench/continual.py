"""Warm starts on Flowers-102: epochs (and wall time) to reach the from-scratch run's top-1.

Three runs per seed, all through the trainer's own code (``fit_adapter``, ``warm_start``), the
shared pretrained DeiT-tiny, the Consolidator's defaults:

1. *half*: from scratch on half the training images (every other image of each class);
2. *scratch*: from scratch on all of them, ``--epochs`` epochs; its final test top-1 is the target;
3. *warm*: all of them again, warm-started from *half*'s delta (``mgr train --init``).

After every epoch of (2) and (3) the test top-1 is measured (outside the timed training); the
table gives the first epoch at which each run reaches the target and the training time until
then. The two full runs are equally good versions of one task, so the largest drop of any class's
top-1 between them is the per-class noise the forgetting gate's default must clear.

    .venv/bin/python bench/continual.py --quick      # 1 seed, 5 epochs, 64 px, 1/4 of test
    .venv/bin/python bench/continual.py              # 3 seeds, 10 epochs, 112 px
    python bench/continual.py --device cuda --img-size 224 --epochs 20
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from manager.backbone import backbone_state, build_backbone, content_hash
from manager.datasets import create_dataset
from manager.datasets.registry import Labeled, every_kth
from manager.delta.delta import DeltaMeta
from manager.device import resolve_device
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors, decode_transform
from manager.train.evaluate import evaluate
from manager.train.loop import EpochEvent
from manager.train.methods import get_method
from manager.train.train_adapter import TrainData, export_adapter, fit_adapter, prepare_model
from manager.train.warmstart import InitSource, warm_start

ROOT = Path(__file__).resolve().parents[1]
# ../shared/assets next to the checkout (a worktree under wt/ looks one level further up).
ASSETS = next(
    (p / "shared" / "assets" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared").is_dir()),
    ROOT.parent / "shared" / "assets",
)
WEIGHTS = ASSETS / "deit_tiny_patch16_224.safetensors"


def half(data: ImageTensors) -> ImageTensors:
    """Every other image of each class."""
    keep, seen = [], {}
    for i, y in enumerate(data.labels.tolist()):
        if seen.get(y, 0) % 2 == 0:
            keep.append(i)
        seen[y] = seen.get(y, 0) + 1
    idx = torch.tensor(keep)
    return ImageTensors(data.images[idx], data.labels[idx])


def run(
    spec: str,
    classes: list[str],
    train: ImageTensors,
    test: ImageTensors,
    epochs: int,
    seed: int,
    device: torch.device,
    init: InitSource | None = None,
    label: str = "",
) -> dict:
    """One run; top-1 after every epoch and the training seconds up to it."""
    from manager.datasets.transforms import data_config

    torch.manual_seed(seed)
    n = len(classes)
    model = build_backbone(spec, WEIGHTS, n)
    meta = DeltaMeta("consolidator", spec, content_hash(backbone_state(model)), torch.float32, n)
    cfg = TrainConfig(epochs=epochs, seed=seed)
    method = get_method("consolidator")
    prepare_model(model, method, cfg)
    if init is not None:
        warm_start(model, init, classes)
    dc = data_config(model)
    mean, std = torch.tensor(dc["mean"]), torch.tensor(dc["std"])
    curve: list[tuple[int, float, float]] = []
    clock = {"start": time.perf_counter(), "paused": 0.0}

    def after_epoch(event) -> None:
        if not isinstance(event, EpochEvent):
            return
        now = time.perf_counter()
        top1 = evaluate(model, test, n, mean, std, device=device)["top1"]
        curve.append((event.epoch, top1, now - clock["start"] - clock["paused"]))
        print(f"  {label} epoch {event.epoch}: top-1 {top1:.1f}% after {curve[-1][2]:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        clock["paused"] += time.perf_counter() - now

    data = TrainData(train, test)
    result = fit_adapter(model, method, cfg, data, device, progress=after_epoch)
    delta, metrics = export_adapter(model, method, data, result, device, meta=meta,
                                    class_names=classes)  # fmt: skip
    return {"curve": curve, "delta": delta, "per_class": metrics["per_class_top1"]}


def reached(curve: list[tuple[int, float, float]], target: float) -> tuple[int | None, float]:
    for epoch, top1, seconds in curve:
        if top1 >= target - 1e-9:
            return epoch, seconds
    return None, curve[-1][2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument(
        "--test-every",
        type=int,
        default=1,
        help="measure top-1 on every k-th test image of each class (1: the whole split)",
    )
    ap.add_argument("--quick", action="store_true", help="1 seed, 5 epochs, 64 px, test/4")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()
    if not WEIGHTS.exists():
        sys.exit(f"bench/continual needs the shared assets at {ASSETS}")
    if args.quick:
        args.seeds, args.epochs, args.img_size, args.test_every = "0", 5, 64, 4
    device = resolve_device(args.device)
    spec = f"deit_tiny_patch16_224:img_size={args.img_size}"
    tf = decode_transform(args.img_size)
    root = ASSETS / "flowers-102"
    ds = create_dataset("flowers102", root, "train", tf)
    classes = list(ds.classes)
    train = ImageTensors.decode(ds).to(device)
    test_ds = create_dataset("flowers102", root, "test", tf)
    if args.test_every > 1:  # the same images for every run: a class-stratified subset
        test_ds = Labeled.subset(test_ds, every_kth(test_ds.targets, args.test_every, (0,)))
    test = ImageTensors.decode(test_ds).to(device)
    print(f"flowers102: {len(train)} train, {len(test)} test images, {len(classes)} classes, "
          f"{args.img_size} px, {args.epochs} epochs, {device}", flush=True)  # fmt: skip
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.perf_counter()
        halfrun = run(spec, classes, half(train), test, args.epochs, seed, device, label="half")
        half_s = time.perf_counter() - t0
        scratch = run(spec, classes, train, test, args.epochs, seed, device, label="scratch")
        target = scratch["curve"][-1][1]
        source = InitSource("flowers", 1, halfrun["delta"], classes)
        warm = run(spec, classes, train, test, args.epochs, seed, device, init=source, label="warm")
        s_ep, s_sec = reached(scratch["curve"], target)
        w_ep, w_sec = reached(warm["curve"], target)
        drops = [
            scratch["per_class"][c] - warm["per_class"].get(c, 0.0) for c in scratch["per_class"]
        ]
        rows.append(
            {
                "seed": seed,
                "half_top1": halfrun["curve"][-1][1],
                "half_seconds": round(half_s, 1),
                "target": target,
                "scratch": {"epoch": s_ep, "seconds": round(s_sec, 1), "curve": scratch["curve"]},
                "warm": {"epoch": w_ep, "seconds": round(w_sec, 1), "curve": warm["curve"]},
                "worst_class_drop": round(max(drops), 1),
                "worst_class_rise": round(-min(drops), 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    print()
    print(
        "| seed | half-data top-1 | scratch top-1 (target) | scratch: epochs, s | "
        "warm: epochs, s | warm top-1 at the end | worst class drop warm vs scratch |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['seed']} | {r['half_top1']:.1f} | {r['target']:.1f} | "
            f"{r['scratch']['epoch']}, {r['scratch']['seconds']:.0f} | "
            f"{r['warm']['epoch'] or '>' + str(args.epochs)}, {r['warm']['seconds']:.0f} | "
            f"{r['warm']['curve'][-1][1]:.1f} | {r['worst_class_drop']:.1f} |"
        )
    if len(rows) > 1:
        w = [r["warm"]["epoch"] or args.epochs + 1 for r in rows]
        print(f"mean epochs to target: scratch {args.epochs}, warm {statistics.mean(w):.1f}")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
