"""Training throughput per method, interleaved in one process so machine noise hits all alike.

    .venv/bin/python bench/train_speed.py                       # DeiT-tiny, 112 px, batch 64
    .venv/bin/python bench/train_speed.py --model vit_base_patch16_224 --img-size 224 --batch 8

Each round times one optimizer step (forward, backward, AdamW) of every method in turn; the table
reports the median over rounds, and each method's speed relative to full fine-tuning.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from manager.backbone import build_backbone
from manager.delta.structure import format_structure
from manager.train.adapter import prepare_model
from manager.train.config import TrainConfig
from manager.train.loop import param_groups
from manager.train.methods import get_method

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="deit_tiny_patch16_224")
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = f"{args.model}:img_size={args.img_size}"
    x = torch.randn(args.batch, 3, args.img_size, args.img_size)
    y = torch.randint(0, 100, (args.batch,))
    steps = {}
    for label, name, over in ROWS:
        model = build_backbone(spec, "random", num_classes=100).train()
        g = model.embed_dim // 2  # two input channels per group, as the paper's release
        structure = ((g * 2, False), (g, True)) if over.get("groups") == "*2" else ((g, False),)
        cfg = TrainConfig(method=name, **{**over, "groups": format_structure(structure)})
        prepare_model(model, get_method(name), cfg)  # the trainer's own checks and surgery
        opt = torch.optim.AdamW(param_groups(model, 1e-4), lr=1e-4)

        def step(model=model, opt=opt) -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up: one-time kernel set-up
        steps[label] = step
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.rounds):
        for label, step in steps.items():
            t = time.perf_counter()
            step()
            times[label].append(time.perf_counter() - t)
    full = statistics.median(times["full fine-tuning"])
    print(
        f"\n{args.model} {args.img_size}px, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, median of {args.rounds} interleaved rounds"
    )
    print("| method | ms / step | img/s | speed vs full fine-tuning |")
    print("|---|---|---|---|")
    for label, ts in times.items():
        m = statistics.median(ts)
        print(f"| {label} | {1e3 * m:.0f} | {args.batch / m:.0f} | {full / m:.2f}x |")


if __name__ == "__main__":
    main()
