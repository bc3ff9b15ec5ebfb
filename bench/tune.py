"""Learning rates per parameter group: base rate x LayerNorm rate, on the validation split.

Trains one method (the Consolidator by default) on each data set's official training split with
every ``LR:LR_NORM`` pair of the grid and each seed, and reports top-1 on the validation split,
side by side in one run. Its figures pick the methods' defaults (BENCHMARKS.md, "Learning rates
per parameter group").

    .venv/bin/python bench/tune.py                         # Flowers-102 + Pets, ~20 min on 2 cores
    .venv/bin/python bench/tune.py --datasets pets --epochs 2 --seeds 0 --grid 3e-3:1e-3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from hardware import hardware_line

from manager.backbone import backbone_state, build_backbone, content_hash
from manager.datasets import create_dataset
from manager.delta.delta import DeltaMeta
from manager.train.config import TrainConfig
from manager.train.data import ImageTensors, decode_transform
from manager.train.methods import get_method
from manager.train.train_adapter import TrainData, prepare_model, train_adapter

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
FOLDERS = {"flowers102": "flowers-102", "pets": "oxford-iiit-pet"}
GRID = "1e-3:1e-3,3e-3:3e-3,3e-3:1e-3,1e-2:1e-2,1e-2:3e-3,1e-2:1e-3"


def run(
    method: str,
    overrides: dict,
    data: TrainData,
    num_classes: int,
    spec: str,
    seed: int,
) -> float:
    """One run through the trainer's own code; top-1 on ``data.eval``."""
    torch.manual_seed(seed)
    model = build_backbone(spec, ASSETS / "deit_tiny_patch16_224.safetensors", num_classes)
    meta = DeltaMeta(method, spec, content_hash(backbone_state(model)), torch.float32, num_classes)
    cfg = TrainConfig.from_json(dict(method=method, seed=seed, **overrides))
    m = get_method(method)
    prepare_model(model, m, cfg)
    _, metrics = train_adapter(model, m, cfg, data, meta=meta)
    return metrics["top1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default="flowers102,pets")
    ap.add_argument("--method", default="consolidator")
    ap.add_argument("--groups", default="96", help="the consolidator's structure")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", default="0,2")
    ap.add_argument("--grid", default=GRID, help="comma-separated LR:LR_NORM pairs")
    args = ap.parse_args()
    if not (ASSETS / "deit_tiny_patch16_224.safetensors").exists():
        sys.exit(f"bench/tune.py needs the shared assets at {ASSETS}")
    seeds = [int(s) for s in args.seeds.split(",")]
    grid = [tuple(float(x) for x in pair.split(":")) for pair in args.grid.split(",")]
    spec = f"deit_tiny_patch16_224:img_size={args.img_size}"
    extra = {"groups": args.groups} if args.method == "consolidator" else {}
    tf = decode_transform(args.img_size)
    table: dict[tuple[float, float], dict[str, list[float]]] = {g: {} for g in grid}
    t_all = time.perf_counter()
    for ds in args.datasets.split(","):
        root = ASSETS / FOLDERS[ds]
        train, val = (
            ImageTensors.decode(create_dataset(ds, root, s, tf)) for s in ("train", "val")
        )
        n_cls = int(max(train.labels.max(), val.labels.max())) + 1
        print(f"{ds}: train {len(train)} -> val {len(val)}, {args.epochs} epochs", flush=True)
        for lr, lr_norm in grid:
            for seed in seeds:
                t0 = time.perf_counter()
                over = {**extra, "epochs": args.epochs, "lr": lr, "lr_norm": lr_norm}
                try:
                    top1 = run(args.method, over, TrainData(train, val), n_cls, spec, seed)
                except Exception as exc:  # a diverged run is a result, not a crash
                    print(f"  lr {lr:g} norm {lr_norm:g} seed {seed}: {exc}", flush=True)
                    top1 = float("nan")
                table[(lr, lr_norm)].setdefault(ds, []).append(top1)
                print(
                    f"  lr {lr:g} norm {lr_norm:g} seed {seed}: val top-1 {top1:.1f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    names = args.datasets.split(",")
    heads = " | ".join(f"{d} val top-1 (seeds {args.seeds})" for d in names)
    print(hardware_line("cpu"))
    print(f"\n| lr | LayerNorm lr | {heads} |")
    print("|---|---|" + "---|" * len(names))
    for (lr, lr_norm), per in table.items():
        cells = []
        for d in names:
            accs = per.get(d, [])
            runs = ", ".join(f"{a:.1f}" for a in accs)
            mean = statistics.fmean(accs) if accs else float("nan")
            cells.append(f"{runs} (mean {mean:.1f})")
        print(f"| {lr:g} | {lr_norm:g} | {' | '.join(cells)} |")
    print(f"\ntotal {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
