"""One Consolidator layer alone, forward + backward, against the frozen and the fully trained one.

    .venv/bin/python bench/consolidator_layer.py                  # DeiT-tiny and ViT-B shapes
    .venv/bin/python bench/consolidator_layer.py --model deit --rounds 20
    .venv/bin/python bench/consolidator_layer.py --baseline 8c7ac5c   # the layer before issue 11

Each of a block's four target shapes (qkv, proj, fc1, fc2) runs every variant in turn, round after
round (machine noise hits all alike), on input ``(batch, tokens, in)``; W0 frozen, bias and
branches trained. ``old`` is ``ConsolidatorLinear`` as of ``--baseline`` (read with git), ``new``
the working tree's. The table sums the four shapes' fastest round (ms) and gives each variant's
speed relative to full fine-tuning of the same linear.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from hardware import hardware_line
from torch import nn

import manager.adapters.consolidator as new

ROOT = Path(__file__).resolve().parents[1]
MODELS = {  # name: (width, g of the paper's ratio, batch, tokens)
    "deit": (192, 96, 64, 50),  # DeiT-tiny, 112 px, batch 64
    "vitb": (768, 384, 8, 197),  # ViT-B/16, 224 px, batch 8
}


def load_baseline(rev: str):
    """The consolidator module as of git revision ``rev``, or None when git cannot give it."""
    try:
        text = subprocess.run(
            ["git", "show", f"{rev}:manager/adapters/consolidator.py"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"(no baseline: git show {rev} failed: {e})", file=sys.stderr)
        return None
    module = types.ModuleType("consolidator_baseline")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(text, f"{rev}:manager/adapters/consolidator.py", "exec"), module.__dict__)
    return module


def variants(lin: nn.Linear, g: int, x: torch.Tensor, modules: dict) -> dict:
    """name -> a callable returning the output whose backward is timed with it."""
    w_full = lin.weight.detach().clone().requires_grad_()
    out = {
        "full fine-tuning": lambda: F.linear(x, w_full, lin.bias),
        "frozen linear (+bias)": lambda: F.linear(x, lin.weight, lin.bias),
    }
    for dp in (0.0, 0.2):
        for tag, mod in modules.items():
            cfg = mod.ConsolidatorConfig((mod.Branch(g),), drop_path=dp)
            layer = mod.ConsolidatorLinear(lin, cfg).train()
            out[f"{tag} g={g}, dp {dp}"] = lambda layer=layer: layer(x)
        for tag, mod in modules.items():
            cfg = mod.ConsolidatorConfig((mod.Branch(2 * g), mod.Branch(g, True)), drop_path=dp)
            layer = mod.ConsolidatorLinear(lin, cfg).train()
            out[f"{tag} g={2 * g},{g}s, dp {dp}"] = lambda layer=layer: layer(x)
    return out


def bench(model: str, rounds: int, modules: dict) -> None:
    width, g, batch, tokens = MODELS[model]
    shapes = {"qkv": (3 * width, width), "proj": (width, width)}
    shapes |= {"fc1": (4 * width, width), "fc2": (width, 4 * width)}
    best: dict[str, dict[str, float]] = {}
    for layer_name, (out_f, in_f) in shapes.items():
        torch.manual_seed(0)
        lin = nn.Linear(in_f, out_f)
        lin.weight.requires_grad_(False)
        x = torch.randn(batch, tokens, in_f, requires_grad=True)
        gy = torch.randn(batch, tokens, out_f)
        steps = variants(lin, g, x, modules)
        for fn in steps.values():  # warm-up
            fn().backward(gy)
        for _ in range(rounds):
            for name, fn in steps.items():
                t = time.perf_counter()
                fn().backward(gy)
                dt = time.perf_counter() - t
                row = best.setdefault(name, {})
                row[layer_name] = min(row.get(layer_name, float("inf")), dt)
    full = sum(best["full fine-tuning"].values())
    print(hardware_line("cpu"))
    print(
        f"\n{model}: width {width}, batch {batch} x {tokens} tokens, "
        f"{torch.get_num_threads()} threads, fastest of {rounds} interleaved rounds"
    )
    print("| variant | " + " | ".join(f"{n} ms" for n in shapes) + " | sum ms | vs full |")
    print("|---|" + "---|" * (len(shapes) + 2))
    for name, row in best.items():
        total = sum(row.values())
        cells = " | ".join(f"{1e3 * row[n]:.1f}" for n in shapes)
        print(f"| {name} | {cells} | {1e3 * total:.1f} | {full / total:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=[*MODELS, "all"], default="all")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    ap.add_argument("--baseline", default="8c7ac5c", help="git revision of the 'old' layer")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    modules = {"new": new}
    old = load_baseline(args.baseline) if args.baseline else None
    if old is not None:
        modules = {"old": old, "new": new}
    for model in MODELS if args.model == "all" else [args.model]:
        bench(model, args.rounds, modules)


if __name__ == "__main__":
    main()
