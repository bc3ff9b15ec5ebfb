"""Switching a ViT-B/16 between two tasks: exact writes vs PEFT-style merge/unmerge vs checkpoints.

One table, one run, random weights (the numbers do not depend on them):

* switch latency A -> B, in memory: the fused switch the `Switcher` uses (one flat buffer, one
  ``index_copy_`` per delta, ``manager.delta.fused``), the per-layer exact writes through strided
  views (restore A's supports from W0, apply B's, ``manager.delta.apply``), a dense
  merge/unmerge of the same deltas (``W -= dW_A; W += dW_B``, as PEFT does), and loading a full
  fine-tuned checkpoint (``load_state_dict`` of a safetensors file of the whole model); plus this
  switcher on a memory-mapped live safetensors file, without and with msync + fsync (small
  g=384 blocks put support values in every row, so a durable flush writes back every page of
  the adapted weights: O(backbone) disk I/O even though only 0.5% of the values change);
* drift: max |W - W0| over the adapted weights after 1,000 merge/unmerge cycles, float32 and bf16;
* forward throughput of the merged model against the unmerged adapter model (ConsolidatorLinear);
* across backbones, through ``mgr switch``'s own code on a real home (catalog, W0 files, live
  folders): a switch to a task on a backbone with no live file yet (its W0 copied into
  ``live/<hash>/``, then the delta applied, durable) against a switch between two tasks on one
  backbone (``--cross-only`` runs this row alone).

Each delta: one g=384 branch (no shuffle) on every qkv/proj/fc1/fc2, random values, plus random
biases, LayerNorms and a 100-class head: the paper's released setting.

    .venv/bin/python bench/switch.py [--cycles 1000] [--batch 8] [--threads 1] [--device cpu]
    .venv/bin/python bench/switch.py --cross-only
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import safetensors.torch as st
import timm
import torch
from hardware import hardware_line

from manager.adapters import Branch, ConsolidatorConfig, inject_consolidator
from manager.adapters.inject import delta_whole_params, target_linears
from manager.delta.apply import apply, restore, switch
from manager.delta.delta import ConsolidatorLayer, Delta, DeltaMeta
from manager.delta.fused import FlatWeights, PlanCache, fused_switch
from manager.delta.structure import scatter_union, support_numel
from manager.home import Home
from manager.store.fs import Store
from manager.switch.livefile import LiveFile

BRANCHES = ((384, False),)


def make_delta(
    model: torch.nn.Module, seed: int, dtype: torch.dtype, branches: tuple = BRANCHES
) -> Delta:
    """A random consolidated delta with the structure and size of a trained one."""
    gen = torch.Generator().manual_seed(seed)
    layers = {}
    for name, lin in target_linears(model):
        shape = tuple(lin.weight.shape)
        n = support_numel(shape, branches)
        layers[f"{name}.weight"] = ConsolidatorLayer(
            shape, branches, (torch.randn(n, generator=gen) * 1e-2).to(dtype)
        )
    whole = {  # built on the CPU, whatever the model's device (a delta file is read there)
        n: (p.detach().cpu() + torch.randn(p.shape, generator=gen) * 1e-2).to(dtype)
        for n, p in delta_whole_params(model).items()
    }
    return Delta(layers, whole, DeltaMeta("consolidator", "vit_base_patch16_224", "x", dtype, 100))


def timed(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    """Median seconds of ``fn`` (after ``warmup`` calls)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def max_diff(live: dict, base: dict, names) -> float:
    return max((live[n].float() - base[n].float()).abs().max().item() for n in names)


class Dense:
    """PEFT-style merge/unmerge: dense dW per layer, added and subtracted in place."""

    def __init__(self, delta: Delta, device):
        self.dw = {
            n: scatter_union(lay.values, lay.shape, lay.branches).to(device)
            for n, lay in delta.layers.items()
        }
        self.whole = {n: t.to(device) for n, t in delta.whole.items()}

    def merge(self, live: dict) -> None:
        for n, d in self.dw.items():
            live[n].add_(d.to(live[n].dtype))
        for n, t in self.whole.items():
            live[n].copy_(t)

    def unmerge(self, live: dict) -> None:
        for n, d in self.dw.items():
            live[n].sub_(d.to(live[n].dtype))


@torch.no_grad()
def fused_latency(model, base, a: Delta, b: Delta, device, reps: int) -> float:
    """The fused switch (``manager.delta.fused``): the model's weights in one flat buffer, a plan
    per delta, A -> B in ``index_copy_`` kernels; checked bit-exact against `apply`."""
    m = copy.deepcopy(model)
    fw = FlatWeights.adopt(m, list(base))
    cache = PlanCache(fw, base)
    pa, pb = cache.plan(a), cache.plan(b)
    fused_switch(fw.flat, None, pa)
    state = [pa, pb]

    def run():
        fused_switch(fw.flat, state[0], state[1])
        state.reverse()

    sec = timed(run, reps, warmup=2)
    fused_switch(fw.flat, state[0], pb)
    want = {n: t.clone() for n, t in base.items()}
    apply(want, base, b)
    assert all(torch.equal(p, want[n]) for n, p in m.named_parameters()), "fused switch not exact"
    return sec


@torch.no_grad()
def floor_latency(model, base, a: Delta, reps: int) -> float:
    """The floor of any exact switch: one gather plus one scatter over A's support positions in
    the flat buffer (what a switch must at least read and write), no W0 restore, no plan."""
    m = copy.deepcopy(model)
    fw = FlatWeights.adopt(m, list(base))
    index = PlanCache(fw, base).plan(a).index
    flat = fw.flat
    return timed(lambda: flat.index_copy_(0, index, flat.index_select(0, index)), reps, warmup=2)


@torch.no_grad()
def switch_cycles(model, base, a: Delta, b: Delta, cycles: int) -> dict:
    """``cycles`` fused switches A <-> B, each checked bit-identical (``torch.equal``) to a fresh
    merge of the delta switched to (``apply`` on W0); returns the count of mismatches."""
    m = copy.deepcopy(model)
    fw = FlatWeights.adopt(m, list(base))
    cache = PlanCache(fw, base)
    plans = (cache.plan(a), cache.plan(b))
    fresh = []
    for d in (a, b):
        want = {n: t.clone() for n, t in base.items()}
        apply(want, base, d)
        fresh.append(torch.cat([want[n].reshape(-1) for n in fw.offsets]))  # the flat layout
    fused_switch(fw.flat, None, plans[0])
    mismatches, cur = 0, 0
    for _ in range(cycles):
        nxt = 1 - cur
        fused_switch(fw.flat, plans[cur], plans[nxt])
        cur = nxt
        if not torch.equal(fw.flat[: fresh[cur].numel()], fresh[cur]):
            mismatches += 1
    return {"cycles": cycles, "mismatches": mismatches}


@torch.no_grad()
def dense_latency(model, base, a: Delta, b: Delta, device, reps: int) -> float:
    """PEFT-style dense unmerge A + merge B, in place on the model's weights (left at W0)."""
    live = dict(model.named_parameters())
    da, db = Dense(a, device), Dense(b, device)
    da.merge(live)
    dstate = [da, db]

    def dense():
        dstate[0].unmerge(live)
        dstate[1].merge(live)
        dstate.reverse()

    sec = timed(dense, reps)
    for n, t in base.items():
        live[n].copy_(t)
    return sec


@torch.no_grad()
def checkpoint_latency(model, base, b: Delta, tmp: Path, device, reps: int) -> float:
    """Loading a full fine-tuned checkpoint of the whole model (task B's weights) from disk."""
    full = copy.deepcopy(model)
    apply(dict(full.named_parameters()), base, b)
    ckpt = tmp / "full_b.safetensors"
    st.save_file({k: v.contiguous().cpu() for k, v in full.state_dict().items()}, str(ckpt))
    del full
    sec = timed(lambda: model.load_state_dict(st.load_file(str(ckpt), device=str(device))), reps)
    live = dict(model.named_parameters())
    for n, t in base.items():
        live[n].copy_(t)
    return sec


@torch.no_grad()
def latency(model, base, a, b, tmp: Path, device, reps: int) -> dict[str, float]:
    live = dict(model.named_parameters())
    out = {}
    apply(live, base, a)
    state = [a, b]

    def ours():
        switch(live, base, state[0], state[1])
        state.reverse()

    out["ours"] = timed(ours, reps, warmup=2)

    restore(live, base, state[0])  # back to W0, then the dense path from A
    out["dense"] = dense_latency(model, base, a, b, device, reps)
    out["checkpoint"] = checkpoint_latency(model, base, b, tmp, device, max(3, reps // 4))

    # This switcher on a live file: memory-mapped, the two supports written, msync + fsync.
    w0_file, live_file = tmp / "w0.safetensors", tmp / "live.safetensors"
    cpu_base = {n: t.cpu().contiguous() for n, t in base.items()}
    st.save_file(cpu_base, str(w0_file))
    st.save_file(cpu_base, str(live_file))
    del cpu_base
    store = Store(Home(tmp.resolve()))  # the bench's scratch folder stands in for a home
    lf, bf = LiveFile(live_file, store=store), LiveFile(w0_file, readonly=True)
    ca, cb = strip_head(a, bf.tensors), strip_head(b, bf.tensors)
    apply(lf.tensors, bf.tensors, ca)
    fstate = [ca, cb]

    def on_file():
        switch(lf.tensors, bf.tensors, fstate[0], fstate[1])
        lf.flush()
        fstate.reverse()

    out["file"] = timed(on_file, reps, warmup=2)

    def on_file_no_sync():
        switch(lf.tensors, bf.tensors, fstate[0], fstate[1])
        fstate.reverse()

    out["file_nosync"] = timed(on_file_no_sync, reps, warmup=2)
    lf.flush()
    lf.close()
    bf.close()
    return out


def strip_head(delta: Delta, names) -> Delta:
    """The delta without its head (a live file holds the backbone only; the head file is apart)."""
    return Delta(delta.layers, {n: t for n, t in delta.whole.items() if n in names}, delta.meta)


@torch.no_grad()
def drift(model, a: Delta, cycles: int, dtype: torch.dtype, device) -> dict[str, float]:
    """Max |W - W0| after ``cycles`` merge/unmerge cycles, per method, in ``dtype``."""
    m = copy.deepcopy(model).to(dtype)
    live = dict(m.named_parameters())
    names = list(a.layers)
    base = {n: p.detach().clone() for n, p in live.items() if n in {*names, *a.whole}}
    base_all = {n: p.detach().clone() for n, p in live.items()}
    body = strip_head(a, base_all)
    for _ in range(cycles):  # this switcher: exact writes on the supports
        apply(live, base_all, body)
        restore(live, base_all, body)
    ours = max_diff(live, base, names)
    # Dense merge/unmerge is O(backbone) a cycle; 1,000 cycles on all 12 blocks would take
    # minutes on 2 cores, so it runs on block 0's four layers (7.1M values): the rounding of each
    # value is the same process in every layer.
    sub = [n for n in names if n.startswith("blocks.0.")]
    dense = Dense(Delta({n: a.layers[n] for n in sub}, {}, a.meta), device)
    for _ in range(cycles):
        dense.merge(live)
        dense.unmerge(live)
    peft = max_diff(live, base, sub)
    del m, live, base_all, dense
    return {"ours": ours, "dense": peft, "dense_values": sum(base[n].numel() for n in sub)}


@torch.no_grad()
def throughput(
    model, batch: int, device, reps: int, branches: tuple = BRANCHES
) -> dict[str, float]:
    """Images/s of the merged (plain) model and of the unmerged ConsolidatorLinear model."""
    x = torch.randn(batch, 3, *model.patch_embed.img_size, device=device)
    merged = model.eval()
    adapter = inject_consolidator(
        copy.deepcopy(model), ConsolidatorConfig(tuple(Branch(g, s) for g, s in branches))
    ).eval()
    out = {}
    for name, m in (("merged", merged), ("unmerged", adapter)):
        out[name] = batch / timed(lambda m=m: m(x), reps)
    return out


def cross_backbone(tmp: Path, reps: int) -> dict[str, float]:
    """``mgr switch`` on a real home with two ViT-B backbones (different weights): the first
    switch to the second backbone's task (a full load: W0 copied to its live folder) and the
    median switch between two tasks of one backbone (O(delta))."""
    from manager.catalog import open_catalog, tasks
    from manager.registry.backbones import materialise_backbone
    from manager.registry.record import record_version
    from manager.switch.live import switch_live

    home = Home(tmp / "home")
    catalog = open_catalog(home)
    spec = "vit_base_patch16_224"
    try:
        for i, names in enumerate((("a1", "a2"), ("b1",))):
            model = timm.create_model(spec, pretrained=False, num_classes=100).eval()
            with torch.no_grad():
                model.norm.weight.add_(i)  # another backbone: other weights, another hash
            with catalog.session() as s:
                row = materialise_backbone(s, home, model, spec, "random")
                digest, row_id = row.content_hash, row.id
            for k, name in enumerate(names):
                with catalog.session() as s:
                    classes = [f"c{j}" for j in range(100)]
                    tasks.add_task(s, name=name, dataset="synthetic", class_names=classes)
                    tasks.get_task(s, name).backbone_id = row_id
                delta = make_delta(model, 10 * i + k, torch.float32)
                delta.meta = DeltaMeta("consolidator", spec, digest, torch.float32, 100)
                record_version(catalog, name, delta, structure=[list(b) for b in BRANCHES])
            del model
        switch_live(home, catalog, "a1", None)  # backbone A loaded (not timed)
        same = []
        for r in range(reps):
            t0 = time.perf_counter()
            switch_live(home, catalog, "a2" if r % 2 == 0 else "a1", None)
            same.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = switch_live(home, catalog, "b1", None)  # backbone B: a full load
        cross = time.perf_counter() - t0
        assert report.loaded
    finally:
        catalog.close()
    return {"same": statistics.median(same), "cross": cross}


def print_cross(out: dict[str, float]) -> None:
    print(f"\n{'mgr switch (live files on disk, durable)':<52}{'latency':>11}{'vs same':>9}")
    print("-" * 72)
    print(f"{'same backbone: restore A + apply B (O(delta))':<52}{out['same'] * 1000:>9.2f}ms")
    print(
        f"{'another backbone: copy its W0 + apply (O(backbone))':<52}"
        f"{out['cross'] * 1000:>9.2f}ms{out['cross'] / out['same']:>8.0f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=20, help="timed switches per method")
    ap.add_argument("--fwd-reps", type=int, default=3, help="timed forward passes per model")
    # One thread by default: on 2 shared cores, torch's elementwise ops with 2 threads ran 15x
    # slower (760 ms vs 50 ms for a dense unmerge+merge) whenever another process was busy.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 drift runs")
    ap.add_argument(
        "--cross-only", action="store_true", help="only the cross-backbone mgr switch row"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.perf_counter()
    if args.cross_only:
        with tempfile.TemporaryDirectory(prefix="mgr-bench-") as tmp:
            print_cross(cross_backbone(Path(tmp), max(5, args.reps // 2)))
        print(f"(bench ran {time.perf_counter() - t_start:.0f} s)")
        return

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=100)
    model = model.eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    a, b = make_delta(model, 1, torch.float32), make_delta(model, 2, torch.float32)
    n_params = sum(t.numel() for t in base.values())
    touched = sum(support_numel(lay.shape, BRANCHES) for lay in a.layers.values())
    touched += sum(t.numel() for t in a.whole.values())

    with tempfile.TemporaryDirectory(prefix="mgr-bench-") as tmp:
        lat = latency(model, base, a, b, Path(tmp), device, args.reps)
    lat["fused"] = fused_latency(model, base, a, b, device, args.reps)
    drifts = {"float32": drift(model, a, args.cycles, torch.float32, device)}
    if not args.no_bf16:
        a16 = make_delta(model, 1, torch.bfloat16)
        drifts["bfloat16"] = drift(model, a16, args.cycles, torch.bfloat16, device)
    for n, t in base.items():  # back to W0 (values do not change the speed)
        model.get_parameter(n).copy_(t)
    fwd = throughput(model, args.batch, device, args.fwd_reps)

    f32, b16 = drifts["float32"], drifts.get("bfloat16")

    def dcol(d: dict | None, key: str) -> str:
        return "-" if d is None else f"{d[key]:.2e}"

    print(hardware_line(args.device))
    print(
        f"ViT-B/16 ({n_params / 1e6:.1f}M params), one g=384 branch: a switch writes "
        f"{touched:,} values per delta ({100 * touched / n_params:.2f}%); device {device}, "
        f"{args.threads} threads, torch {torch.__version__}"
    )
    rows = [
        ("fused exact switch (flat buffer, Switcher)", lat["fused"], "ours", "0 (exact)"),
        ("per-layer exact writes (strided views)", lat["ours"], "ours", "0 (exact)"),
        ("this switcher, live file (mmap writes)", lat["file_nosync"], "ours", "0 (exact)"),
        ("  the same + msync/fsync (durable)", lat["file"], "ours", "0 (exact)"),
        ("dense merge/unmerge (PEFT style)", lat["dense"], "dense", None),
        ("full fine-tuned checkpoint load", lat["checkpoint"], None, "0 (copies)"),
    ]
    head = f"{'switch A -> B':<42}{'latency':>11}{'vs fused':>9}   {'max |W-W0| after':>17}"
    print(f"\n{head} {args.cycles} cycles: float32 / bf16")
    print("-" * 110)
    for name, sec, key, exact in rows:
        ratio = sec / lat["fused"]
        if key == "ours":
            d = f"{dcol(f32, 'ours')} / {dcol(b16, 'ours')}"
        elif key == "dense":
            d = f"{dcol(f32, 'dense')} / {dcol(b16, 'dense')}"
            d += f" (block 0: {f32['dense_values']:,} values)"
        else:
            d = exact
        print(f"{name:<42}{sec * 1000:>9.2f}ms{ratio:>8.1f}x   {d}")
    print("-" * 110)
    print(
        f"forward, batch {args.batch} at 224 px: merged {fwd['merged']:.2f} img/s, unmerged "
        f"adapter (ConsolidatorLinear) {fwd['unmerged']:.2f} img/s: the unmerged model takes "
        f"{100 * (fwd['merged'] / fwd['unmerged'] - 1):+.1f}% time per image"
    )
    with tempfile.TemporaryDirectory(prefix="mgr-bench-") as tmp:
        print_cross(cross_backbone(Path(tmp), max(5, args.reps // 2)))
    print(f"(bench ran {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
