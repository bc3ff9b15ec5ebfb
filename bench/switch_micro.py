"""One switch on ViT-B/16 (random weights, one g=384 branch): exact writes vs a dense merge.

    .venv/bin/python bench/switch_micro.py [--threads N] [--repeats N] [--rounds N]

Rows (ms, one run, same process):
  exact switch A->B       switch(live, W0, A, B): B has A's structure, so its writes W0 + dW_B
                          cover A's support and nothing needs restoring first (+ whole tensors)
  exact, supports only    the same, layer supports only (no biases/LayerNorms/head)
  with SupportCache       exact switch reading W0's supports from a contiguous cache
  dense unmerge+merge     PEFT style: W.sub_(dW_A); W.add_(dW_B) with dense dW precomputed
  dense, building dW      the same, dW scattered from the stored values each time
  floor                   one contiguous copy of one delta's layer values; and of as many bytes
                          as the 64-byte cache lines its supports touch in W (the real traffic)
Everything is cache-warm (the supports' lines fit in L3), as in a process switching repeatedly.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
from hardware import hardware_line

from manager.adapters import Branch, ConsolidatorConfig, inject_consolidator, unwrap
from manager.adapters.fold import consolidate
from manager.delta.apply import SupportCache, apply, switch
from manager.delta.delta import Delta
from manager.delta.structure import positions, scatter_union


def median_ms(fn, repeats: int) -> float:
    fn()  # warm caches
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def make_deltas(model, n: int) -> list[Delta]:
    inject_consolidator(model, ConsolidatorConfig((Branch(384),)))
    deltas = []
    for seed in range(n):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "branches" in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 1e-2)
        deltas.append(consolidate(model, backbone_name="vit_base_patch16_224", backbone_hash="x"))
    unwrap(model, merge=False)
    return deltas


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=50, help="timed steps per case and round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10).eval()
    a, b = make_deltas(model, 2)
    live = {n: p.detach() for n, p in model.named_parameters()}
    base = {n: t.clone() for n, t in live.items()}
    layers_only = [Delta(d.layers, {}, d.meta) for d in (a, b)]
    dense = [
        {n: scatter_union(lay.values, lay.shape, lay.branches) for n, lay in d.layers.items()}
        for d in (a, b)
    ]
    values = sum(lay.values.numel() for lay in a.layers.values())
    whole = sum(t.numel() for t in a.whole.values())

    state = {"cur": 0}

    def exact(deltas, cache=None):
        def run():
            i = state["cur"]
            switch(live, base, deltas[i], deltas[1 - i], cache=cache)
            state["cur"] = 1 - i

        return run

    def dense_switch():
        i = state["cur"]
        for n in dense[i]:
            live[n].sub_(dense[i][n])
            live[n].add_(dense[1 - i][n])
        state["cur"] = 1 - i

    def dense_building():
        i = state["cur"]
        for n, lay in a.layers.items():
            old, new = (a, b) if i == 0 else (b, a)
            live[n].sub_(scatter_union(old.layers[n].values, lay.shape, lay.branches))
            live[n].add_(scatter_union(new.layers[n].values, lay.shape, lay.branches))
        state["cur"] = 1 - i

    # Floors: the delta's values moved once, and the 64-byte cache lines its supports touch in W
    # (c=2 floats per row: every row of every adapted weight costs one line) moved once.
    lines = sum(
        torch.unique(positions(lay.shape, 384, False) // 16).numel() for lay in a.layers.values()
    )
    src, dst = torch.randn(values), torch.empty(values)
    lsrc, ldst = torch.randn(lines * 16), torch.empty(lines * 16)

    def reset(delta: Delta | None) -> None:
        for n, t in base.items():
            live[n].copy_(t)
        if delta is not None:
            apply(live, base, delta)
        state["cur"] = 0

    cache = SupportCache()
    reps = max(5, args.repeats // 5)
    cases = [  # label, state to start from, one step, repeats per round
        ("exact switch A->B (supports + whole)", a, exact([a, b]), args.repeats),
        ("exact switch, layer supports only", a, exact(layers_only), args.repeats),
        ("exact switch A->B, with SupportCache", a, exact([a, b], cache), args.repeats),
        ("dense unmerge+merge (dW precomputed)", layers_only[0], dense_switch, reps),
        ("dense unmerge+merge (building dW)", layers_only[0], dense_building, reps),
        ("floor: one delta's values, copied", None, lambda: dst.copy_(src), args.repeats),
        (f"floor: {lines:,} lines (64 B) copied", None, lambda: ldst.copy_(lsrc), args.repeats),
    ]
    # Rounds interleave the cases so a burst of load from elsewhere does not land on one row.
    samples: dict[str, list[float]] = {label: [] for label, *_ in cases}
    for _ in range(args.rounds):
        for label, start, step, n in cases:
            if start is not None:
                reset(start)
            samples[label].append(median_ms(step, n))
    rows = [(label, statistics.median(v)) for label, v in samples.items()]

    # 100 switches ending on A, compared with a fresh merge of A: dense drifts, exact does not.
    fresh = {n: t.clone() for n, t in base.items()}
    apply(fresh, base, layers_only[0])
    reset(layers_only[0])
    for _ in range(100):
        dense_switch()
    drift = max((live[n] - fresh[n]).abs().max().item() for n in dense[0])
    reset(layers_only[0])
    for _ in range(100):
        exact(layers_only)()
    bit_exact = all(torch.equal(live[n], fresh[n]) for n in base)

    exact_ms = rows[1][1]  # the dense rows touch layers only: compare like with like
    print(hardware_line("cpu"))
    print(
        f"ViT-B/16, one g=384 branch: {values:,} delta values + {whole:,} whole values per delta;"
    )
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; median over "
        f"{args.rounds} interleaved rounds of per-round medians\n"
    )
    print(f"{'':40s} {'ms':>9s} {'ratio':>8s}")
    for label, ms in rows:
        print(f"{label:40s} {ms:9.3f} {ms / exact_ms:8.2f}")
    print(
        f"\n100 switches back to A vs a fresh merge of A: dense max |diff| {drift:.1e}, "
        f"exact bit-identical: {bit_exact}"
    )


if __name__ == "__main__":
    main()
