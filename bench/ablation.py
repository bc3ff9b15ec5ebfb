"""One-factor-at-a-time ablation of the Consolidator's recipe against its baselines.

Each ``--variant 'LABEL|METHOD|k=v k=v'`` is one row: a method at its own defaults (``mgr train``'s,
per-role rates included) with the TrainConfig fields ``k=v`` changed (``lr``, ``lr_norm``,
``lr_branch``, ``drop_path``, ``groups``, ``shuffle``, ``warmup_epochs``, ``weight_decay``,
``lora_rank``...), plus ``init=B``: the branches re-drawn uniform in +-B. Every (variant, seed) run
appends one JSON line to ``--log``, so a long ablation survives being stopped and can be grown a
seed at a time; ``--report`` prints the mean +- sd table with the Consolidator default row's lead
over each row, paired by seed (mean +- sd of the per-seed differences). Runs go through
bench/accuracy.py's ``run_one`` (the trainer's own code). The schedule defaults to the demo's
(``mgr demo``): 112 px, one warm-up epoch, Flowers-102 train -> val, Pets trainval -> test.

    python bench/ablation.py --dataset pets --epochs 8 --seeds 0,1,2 \\
        --variant 'Consolidator|consolidator|' --variant 'BitFit|bitfit|' \\
        --variant 'branches 3e-3|consolidator|lr_branch=3e-3' --log runs/pets.jsonl
    python bench/ablation.py --report runs/pets.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import ASSETS, run_one

from manager.backbone import build_backbone
from manager.datasets import create_dataset
from manager.errors import MgrError
from manager.train.data import ImageTensors, decode_transform

SPLITS = {
    "flowers102": ("flowers-102", "train", "val"),
    "pets": ("oxford-iiit-pet", "trainval", "test"),
}
REFERENCE = "Consolidator"  # the row the margins are measured against


def parse_variant(text: str) -> tuple[str, str, dict, float | None]:
    """``'LABEL|METHOD|k=v k=v'`` -> (label, method, TrainConfig overrides, branch init)."""
    parts = text.split("|")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise SystemExit(f"--variant {text!r}: expected 'LABEL|METHOD|k=v k=v'")
    label, method, over = parts[0], parts[1], {}
    for item in " ".join(parts[2:]).split():
        if "=" not in item:
            raise SystemExit(f"--variant {text!r}: {item!r} is not k=v")
        k, v = item.split("=", 1)
        over[k] = v if k == "groups" else _value(v)  # "48" is a structure, not a number
    init = over.pop("init", None)
    return label, method, over, init


def _value(v: str) -> object:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def report(path: Path) -> None:
    """The table of a log: per (dataset, epochs, label), mean +- sd over seeds, margin vs C."""
    rows: dict[tuple, list[dict]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows.setdefault((r["dataset"], r["epochs"], r["label"]), []).append(r)
    for ds, ep in sorted({(k[0], k[1]) for k in rows}):
        group = {k[2]: v for k, v in rows.items() if k[:2] == (ds, ep)}
        ref = group.get(REFERENCE)
        split = group[next(iter(group))][0]["eval_split"]
        print(
            f"\n| {ds}, {ep} epochs, {split} | top-1 % (mean ± sd) | seeds | {REFERENCE} lead "
            f"| stored bytes | % of backbone |"
        )
        print("|---|---|---|---|---|---|")
        for label, runs in group.items():
            accs = [r["top1"] for r in runs]
            mean = statistics.mean(accs)
            sd = f"{statistics.stdev(accs):.1f}" if len(accs) > 1 else "-"
            margin = "-" if ref is None or label == REFERENCE else _margin(ref, runs)
            print(
                f"| {label} | {mean:.1f} ± {sd} | {len(accs)} | {margin} "
                f"| {runs[0]['bytes']:,} | {runs[0]['pct']:.2f}% |"
            )


def _margin(ref: list[dict], runs: list[dict]) -> str:
    """The Consolidator's lead over a row, paired by seed: mean +- sd of the per-seed differences
    (positive: the Consolidator is ahead)."""
    mine = {r["seed"]: r["top1"] for r in ref}
    diffs = [mine[r["seed"]] - r["top1"] for r in runs if r["seed"] in mine]
    if not diffs:
        return "-"
    sd = f" ± {statistics.stdev(diffs):.1f}" if len(diffs) > 1 else ""
    return f"{statistics.mean(diffs):+.1f}{sd}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", choices=sorted(SPLITS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--warmup-epochs", type=int, default=1, help="as the demo [default: 1]")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL|METHOD|k=v ...")
    ap.add_argument("--eval-split", help="[default: val for Flowers-102, test for Pets]")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--log", type=Path, help="append one JSON line per run here")
    ap.add_argument("--report", type=Path, metavar="LOG", help="print the table of a log and exit")
    args = ap.parse_args()
    if args.report:
        report(args.report)
        return
    if not args.dataset or not args.variant:
        sys.exit("give --dataset and at least one --variant (or --report LOG)")
    variants = [parse_variant(v) for v in args.variant]
    folder, train_split, eval_split = SPLITS[args.dataset]
    eval_split = args.eval_split or eval_split
    tf = decode_transform(args.img_size)
    root = ASSETS / folder
    train, test = (
        ImageTensors.decode(create_dataset(args.dataset, root, s, tf))
        for s in (train_split, eval_split)
    )
    n_cls = int(max(train.labels.max(), test.labels.max())) + 1
    spec = f"deit_tiny_patch16_224:img_size={args.img_size}"
    backbone_bytes = 4 * sum(p.numel() for p in build_backbone(spec, "random").parameters())
    for seed in (int(s) for s in args.seeds.split(",")):
        for label, method, over, init in variants:
            over = {"warmup_epochs": args.warmup_epochs, **over}
            lr = over.pop("lr", None)
            t0 = time.perf_counter()
            try:
                r = run_one(
                    method,
                    over,
                    train,
                    test,
                    n_cls,
                    spec,
                    lr,
                    args.epochs,
                    seed,
                    torch.device(args.device),
                    branch_init=init,
                )
            except MgrError as exc:  # a diverged run is a result too
                print(f"{label} seed {seed}: {exc}", flush=True)
                continue
            rec = {
                "dataset": args.dataset,
                "epochs": args.epochs,
                "img_size": args.img_size,
                "eval_split": eval_split,
                "label": label,
                "method": method,
                "seed": seed,
                "overrides": {
                    **over,
                    **({"lr": lr} if lr is not None else {}),
                    **({"init": init} if init is not None else {}),
                },
                "top1": round(r["top1"], 3),
                "bytes": r["bytes"],
                "pct": round(100 * r["bytes"] / backbone_bytes, 3),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(json.dumps(rec), flush=True)
            if args.log:
                with args.log.open("a") as f:
                    f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
