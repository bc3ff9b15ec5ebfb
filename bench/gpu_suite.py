"""Every GPU target in one prepared call, within a time budget: switch, inference, training speed,
mixed-task batches, serving. Measures what fits, in this order, and says what it skipped.

    python bench/gpu_suite.py --device cuda --out DIR [--budget-s 420]
    python bench/gpu_suite.py --device cpu --smoke --out DIR      # tiny shapes: CI, no GPU

Sections (the issue's targets in brackets):

1. switch: ViT-B/16 with one g=384 branch: the fused exact switch, the floor (one gather plus
   one scatter over the support), dense merge/unmerge, full checkpoint load; 1,000 fused
   switches each checked bit-identical to a fresh merge [<= 0.15 ms, >= 15x dense].
2. inference: ViT-B/16 and DeiT-tiny at batch 64 and 256, fp32 / bf16 / bf16 compiled, merged
   model and unmerged adapters, img/s [bf16 >= 7x fp32].
3. train: DeiT-tiny 224 px, batch 256, `mgr train`'s own step (bench/train_speed.py): full,
   BitFit + LN, LoRA r=8, Consolidator (DropPath 0 and 0.2), bf16 eager and compiled; img/s,
   ratio to full, peak memory; and `mgr train`'s reported img/s for the Consolidator against
   the bench's [Consolidator >= 1.2x full, >= 12,000 img/s compiled].
4. multitask: mixed-task batches over 8 and 64 tasks against the merged model (ViT-B/16, batch
   64, bf16; bench/multitask.py) [>= 0.8x merged].
5. serve: `mgr serve` on the device with 1 and 8 tasks (bench/serve.py): requests/s, p50/p99.

Each section has a share of the budget (unused time passes on); a row that would not fit in
what is left is skipped and named. Each section writes ``N_name.md`` (its table, headed by the
hardware line) and ``N_name.json`` into ``--out``, and ``summary.md`` / ``summary.json`` list
every section's state and every skipped row. Sections 3 (its `mgr train` row) and 5 need the
catalog (SQLAlchemy, Alembic): without them those rows are skipped, everything else runs.
Exit status 1 if a section failed (its error is in its files), else 0.

``--smoke`` runs every section on tiny shapes (DeiT-tiny, depth 1, 32 px, a few steps), compiles
with dynamo's eager backend (no C++ compiler needed), and ignores the row estimates.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(BENCH) not in sys.path:  # the sibling bench scripts and hardware.py import as modules
    sys.path.insert(0, str(BENCH))

from hardware import format_line, hardware  # noqa: E402

SECTIONS = ("switch", "inference", "train", "multitask", "serve")
TITLES = {
    "switch": "Switch latency (fused exact switch vs dense vs checkpoint)",
    "inference": "Inference throughput (merged vs unmerged adapters)",
    "train": "Training speed (mgr train's own step)",
    "multitask": "Mixed-task batches against the merged model",
    "serve": "Serving (mgr serve)",
}
SHARE = {"switch": 1.0, "inference": 2.0, "train": 3.0, "multitask": 1.0, "serve": 1.5}
TINY = {"depth": 1, "img_size": 32}  # --smoke model options (timm kwargs)


def have_catalog() -> str | None:
    """None if the catalog's packages import, else why not (they travel as wheels)."""
    missing = []
    for name in ("sqlalchemy", "alembic"):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return f"needs {' and '.join(missing)} (not installed)" if missing else None


# -- budget and sections ----------------------------------------------------------------------


class Section:
    """One section's rows, skipped rows and deadline; written as Markdown and JSON."""

    def __init__(self, number: int, name: str, deadline: float, smoke: bool):
        self.number, self.name, self.deadline, self.smoke = number, name, deadline, smoke
        self.columns: list[str] = []
        self.rows: list[list] = []
        self.notes: list[str] = []
        self.skipped: list[str] = []
        self.settings: dict = {}
        self.status = "done"
        self.error: str | None = None
        self.seconds = 0.0
        self.est: dict[str, float] = {}  # the longest a row of a kind took
        self.timed: set[str] = set()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def fits(self, what: str, kind: str, guess: float) -> bool:
        """Whether a row of ``kind`` (``guess`` seconds until one has been timed) fits in what is
        left of the section's share; if not, the row is recorded as skipped."""
        need = 0.0 if self.smoke else self.est.get(kind, guess)
        left = self.left()
        if left >= need and left > 0:
            return True
        self.skipped.append(f"{what}: needs ~{need:.0f} s, {max(left, 0):.0f} s left")
        return False

    @contextlib.contextmanager
    def timing(self, kind: str) -> Iterator[None]:
        """Times a row: the longest of a kind becomes that kind's estimate."""
        t = time.monotonic()
        yield
        took = time.monotonic() - t
        print(f"  [{self.name}] {kind} row: {took:.1f} s", flush=True)
        self.est[kind] = max(self.est.get(kind, 0.0), took) if kind in self.timed else took
        self.timed.add(kind)

    def markdown(self, hw_line: str) -> str:
        out = [f"## {self.number}. {TITLES[self.name]}", "", hw_line, ""]
        if self.settings:
            out += ["settings: " + ", ".join(f"{k} {v}" for k, v in self.settings.items()), ""]
        if self.rows:
            out.append("| " + " | ".join(self.columns) + " |")
            out.append("|" + "|".join("---" for _ in self.columns) + "|")
            out += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in self.rows]
            out.append("")
        out += [f"{n}" for n in self.notes]
        if self.notes:
            out.append("")
        if self.error:
            out += [f"FAILED: {self.error}", ""]
        if self.skipped:
            out.append("skipped:")
            out += [f"- {s}" for s in self.skipped]
            out.append("")
        out.append(f"status: {self.status}, {self.seconds:.0f} s")
        return "\n".join(out) + "\n"

    def record(self, hw: dict) -> dict:
        return {
            "section": self.name,
            "number": self.number,
            "title": TITLES[self.name],
            "hardware": hw,
            "settings": self.settings,
            "status": self.status,
            "error": self.error,
            "seconds": round(self.seconds, 2),
            "columns": self.columns,
            "rows": [dict(zip(self.columns, r, strict=True)) for r in self.rows],
            "notes": self.notes,
            "skipped": self.skipped,
        }


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return str(v)


def _median_rate(n: int, times: list[float]) -> float:
    return n / statistics.median(times)


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def compile_backend(backend: str | None) -> Iterator[None]:
    """Every ``torch.compile`` inside (the trainer's own too) uses ``backend``: --smoke traces
    with dynamo's eager backend, which needs no C++ compiler and takes seconds."""
    import torch

    if backend is None:
        yield
        return
    orig = torch.compile

    def patched(*a, **kw):
        kw.setdefault("backend", backend)
        return orig(*a, **kw)

    torch.compile = patched
    try:
        yield
    finally:
        torch.compile = orig


# -- 1. switch --------------------------------------------------------------------------------


def run_switch(sec: Section, a: argparse.Namespace) -> None:
    import switch as sw
    import timm
    import torch

    if a.smoke:
        spec, kw, g, reps, cycles = "deit_tiny_patch16_224", TINY, 96, 3, 20
    else:
        spec, kw, g, reps, cycles = "vit_base_patch16_224", {}, 384, 50, 1000
    branches = ((g, False),)
    sec.settings = {"model": spec, "g": g, "timed switches": reps, "checked switches": cycles}
    sec.columns = ["switch A -> B", "ms", "x fused (time)", "target"]
    device = torch.device(a.device)
    model = timm.create_model(spec, pretrained=False, num_classes=100, **kw).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    da = sw.make_delta(model, 1, torch.float32, branches)
    db = sw.make_delta(model, 2, torch.float32, branches)
    fused = sw.fused_latency(model, base, da, db, device, reps)
    sec.rows.append(["fused exact switch (Switcher)", fused * 1e3, 1.0, "<= 0.15 ms"])
    if sec.fits("floor (one gather + one scatter)", "floor", 5):
        floor = sw.floor_latency(model, base, da, reps)
        sec.rows.append(["floor: one gather + one scatter", floor * 1e3, floor / fused, "-"])
    if sec.fits("dense merge/unmerge", "dense", 10):
        dense = sw.dense_latency(model, base, da, db, device, reps)
        sec.rows.append(["dense merge/unmerge (PEFT style)", dense * 1e3, dense / fused,
                         ">= 15x fused"])  # fmt: skip
        sec.notes.append(f"fused switch vs dense: {dense / fused:.1f}x faster (target >= 15x)")
    if sec.fits("full checkpoint load", "ckpt", 15):
        with tempfile.TemporaryDirectory(prefix="mgr-gpu-suite-") as tmp:
            ck = sw.checkpoint_latency(model, base, db, Path(tmp), device, max(3, reps // 5))
        sec.rows.append(["full checkpoint load (safetensors)", ck * 1e3, ck / fused, "-"])
    if sec.fits(f"{cycles} switches checked against fresh merges", "cycles", 20):
        res = sw.switch_cycles(model, base, da, db, cycles)
        ok = "all bit-identical" if res["mismatches"] == 0 else f"{res['mismatches']} DIFFER"
        sec.notes.append(f"{cycles} fused switches A <-> B against fresh merges: {ok}")
        sec.settings["mismatches"] = res["mismatches"]
        if res["mismatches"]:
            raise RuntimeError(f"{res['mismatches']} of {cycles} switches not bit-identical")


# -- 2. inference -----------------------------------------------------------------------------


def run_inference(sec: Section, a: argparse.Namespace) -> None:
    import copy

    import timm
    import torch

    from manager.adapters import Branch, ConsolidatorConfig, inject_consolidator

    if a.smoke:
        models, kw, batches, reps = [("DeiT-tiny", "deit_tiny_patch16_224")], TINY, [2], 2
    else:
        models = [("ViT-B/16", "vit_base_patch16_224"), ("DeiT-tiny", "deit_tiny_patch16_224")]
        kw, batches, reps = {}, [64, 256], 10
    device = torch.device(a.device)
    sec.settings = {"timed passes (median)": reps, "unmerged": "ConsolidatorLinear, g = dim/2"}
    sec.columns = ["model", "batch", "weights", "fp32 img/s", "bf16 img/s",
                   "bf16 compiled img/s", "bf16 / fp32", "compiled / fp32"]  # fmt: skip
    results: dict[tuple, float] = {}
    nets: dict[tuple, torch.nn.Module] = {}
    for label, spec in models:
        merged = timm.create_model(spec, pretrained=False, num_classes=100, **kw).eval()
        g = merged.embed_dim // 2
        unmerged = inject_consolidator(
            copy.deepcopy(merged), ConsolidatorConfig((Branch(g, False),))
        ).eval()
        for v, m in (("merged", merged), ("unmerged", unmerged)):
            for p in m.parameters():
                p.requires_grad_(False)
            nets[(label, v)] = m
    size = {lab: nets[(lab, "merged")].patch_embed.img_size for lab, _ in models}

    def measure(net, label: str, batch: int, dtype) -> float:
        x = torch.randn(batch, 3, *size[label], device=device, dtype=dtype)
        times = []
        with torch.inference_mode():
            for i in range(reps + 2):  # two warm-ups (a compiled model compiles in the first)
                _sync(device)
                t = time.perf_counter()
                net(x)
                _sync(device)
                if i >= 2:
                    times.append(time.perf_counter() - t)
        return _median_rate(batch, times)

    try:
        _inference_rows(sec, a, nets, batches, measure, results)
    finally:  # what was measured is kept, also when a later row fails
        for label, _ in models:
            for batch in batches:
                for v in ("merged", "unmerged"):
                    r = [results.get((label, v, batch, p)) for p in ("fp32", "bf16", "compiled")]
                    if not any(r):
                        continue
                    f32 = r[0]
                    ratios = [x / f32 if (x and f32) else None for x in r[1:]]
                    sec.rows.append([label, batch, v, *r, *ratios])
        sec.notes.append("fp32 is torch's default (no TF32 matmuls); target: bf16 >= 7x fp32")


def _inference_rows(sec: Section, a, nets: dict, batches: list[int], measure, results) -> None:
    """Eager rows first, all of them; then the compiled ones (each compiles: the costly rows),
    the merged model at the largest batch first."""
    import torch

    device = torch.device(a.device)
    for (label, v), net in nets.items():
        for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            m = net.to(device, dtype)
            for batch in batches:
                what = f"{label} {v} batch {batch} {prec}"
                if sec.fits(what, "eager", 5):
                    with sec.timing("eager"):
                        results[(label, v, batch, prec)] = measure(m, label, batch, dtype)
        net.to("cpu", torch.float32)
        _free()
    backend = "eager" if a.smoke else None
    compiled: dict[tuple, torch.nn.Module] = {}
    order = [(lab, v, b) for v in ("merged", "unmerged") for b in sorted(batches, reverse=True)
             for lab, vv in nets if vv == v]  # fmt: skip
    for label, v, batch in order:
        what = f"{label} {v} batch {batch} bf16 compiled"
        if not sec.fits(what, "compiled", 60):
            continue
        if (label, v) not in compiled:
            with compile_backend(backend):  # a static graph per batch size, as served
                m = nets[(label, v)].to(device, torch.bfloat16)
                compiled[(label, v)] = torch.compile(m, dynamic=False)
        try:
            with sec.timing("compiled"):
                ips = measure(compiled[(label, v)], label, batch, torch.bfloat16)
        except Exception as e:  # e.g. no C++ compiler / Triton: the eager rows still count
            sec.skipped.append(f"{what}: compile failed: {str(e).splitlines()[0][:200]}")
            break
        results[(label, v, batch, "compiled")] = ips
    compiled.clear()
    torch._dynamo.reset()
    for net in nets.values():
        net.to("cpu", torch.float32)
    _free()


# -- 3. training speed ------------------------------------------------------------------------


def run_train(sec: Section, a: argparse.Namespace) -> None:
    import torch
    import train_speed as ts

    if a.smoke:
        img, batch, steps, extra = 32, 8, 2, "depth=1"
    else:
        img, batch, steps, extra = 224, 256, 30, ""
    model = "deit_tiny_patch16_224"
    device = torch.device(a.device)
    sec.settings = {"model": model, "img px": img, "batch": batch, "timed steps": steps,
                    "precision": "bf16"}  # fmt: skip
    mem = "peak MiB (max_memory_allocated)" if device.type == "cuda" else "peak MiB"
    sec.columns = ["method", "setting", "img/s", "x full", mem]
    eager = [0, 1, 2, 3, 4]  # ROWS: full, BitFit+LN, LoRA, Consolidator dp 0, dp 0.2
    compiled = [0, 3, 4, 1, 2]  # the targets' rows first
    if a.smoke:
        eager, compiled = [0, 3, 4], [3]  # the rest are the same code path
    res: dict[tuple[int, bool], tuple[float, float | None]] = {}
    try:
        _train_rows(sec, a, res, eager, compiled, (model, img, batch, steps, extra))
    finally:  # what was measured is kept, also when a later row fails
        for comp in (False, True):
            full = res.get((0, comp), (None,))[0]
            for i in eager if not comp else compiled:
                if (i, comp) not in res:
                    continue
                ips, peak = res[(i, comp)]
                setting = "bf16 compiled" if comp else "bf16 eager"
                sec.rows.append([ts.ROWS[i][0], setting, ips, ips / full if full else None, peak])
    sec.notes.append("targets: Consolidator >= 1.2x full; >= 12,000 img/s compiled at batch 256")
    # mgr train's own reported img/s, Consolidator (DropPath 0, eager), against the bench's.
    why = have_catalog()
    if why:
        sec.skipped.append(f"mgr train's reported img/s: {why}")
        return
    if not sec.fits("mgr train's reported img/s (a real run)", "mgr-train", 60):
        return
    with sec.timing("mgr-train"):
        ips = mgr_train_img_s(a, batch, img, extra)
    bench = res.get((3, False), (None,))[0]
    ratio = f" = {ips / bench:.2f}x the bench's {bench:,.0f}" if bench else ""
    sec.notes.append(f"mgr train --method consolidator --precision bf16 --batch-size {batch}: "
                     f"reports {ips:,.0f} img/s{ratio}")  # fmt: skip
    sec.settings["mgr train img/s"] = round(ips, 1)


def _train_rows(sec: Section, a, res: dict, eager: list, compiled: list, shape: tuple) -> None:
    """Each method, eager then compiled, as far as the section's share goes."""
    import torch
    import train_speed as ts

    from manager.errors import MgrError

    model, img, batch, steps, extra = shape
    device = torch.device(a.device)
    backend = "eager" if a.smoke else None
    for setting, rows, guess in (("bf16 eager", eager, 15), ("bf16 compiled", compiled, 90)):
        comp = setting.endswith("compiled")
        for i in rows:
            what = f"{ts.ROWS[i][0]}, {setting}"
            if not sec.fits(what, setting, guess):
                continue
            with sec.timing(setting):
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                try:
                    with compile_backend(backend if comp else None):
                        p = ts.prepare(i, model, img, batch, a.device, "bf16", comp, extra)
                        sec_s = p.run(steps)
                except (MgrError, torch.OutOfMemoryError) as e:
                    sec.skipped.append(f"{what}: {str(e).splitlines()[0][:200]}")
                    p = None
                else:
                    peak = (
                        torch.cuda.max_memory_allocated(device) / 2**20
                        if device.type == "cuda" else None
                    )  # fmt: skip
                    res[(i, comp)] = (batch * steps / sec_s, peak)
                del p
                if comp:
                    torch._dynamo.reset()
                _free()


def mgr_train_img_s(a: argparse.Namespace, batch: int, img: int, extra: str) -> float:
    """A real `mgr train` (its click command, in this process: no second start-up of torch;
    fresh home, generated images): the img/s it reports."""
    import io

    from manager.cli import main as mgr_main

    spec = "deit_tiny_patch16_224" + (f":img_size={img},{extra}" if extra else "")
    per_class = max(2, (3 * batch) // 12 + 1)  # three batches an epoch: steady-state steps
    data = f"synthetic:num_classes=12,per_class={per_class},img_size={min(img, 64)}"
    with tempfile.TemporaryDirectory(prefix="mgr-gpu-suite-home-") as tmp:

        def mgr(*args: str) -> str:
            buf = io.StringIO()
            try:
                with contextlib.redirect_stdout(buf):
                    mgr_main.main(["--home", tmp, *args], prog_name="mgr", standalone_mode=False)
            except SystemExit as e:  # a command's own exit must not end the suite
                if e.code:
                    msg = f"mgr {args[0]} exited {e.code}: {buf.getvalue()[-300:]}"
                    raise RuntimeError(msg) from None
            return buf.getvalue()

        mgr("task", "add", "bench", "--dataset", data, "--backbone", spec, "--weights", "random")
        epochs = "1" if a.smoke else "2"
        out = mgr("train", "bench", "--method", "consolidator", "--epochs", epochs, "--batch-size",
                  str(batch), "--precision", "bf16", "--device", a.device, "--promote", "always",
                  "--json")  # fmt: skip
        return float(json.loads(out)["metrics"]["train_images_per_s"])


# -- 4. mixed-task batches --------------------------------------------------------------------


def run_multitask(sec: Section, a: argparse.Namespace) -> None:
    import multitask as mt
    import torch

    if a.smoke:
        spec, kw, g, batch, counts, reps = "deit_tiny_patch16_224", TINY, 96, 4, [8], 2
    else:
        spec, kw, g, batch, counts, reps = "vit_base_patch16_224", {}, 384, 64, [8, 64], 20
    sec.settings = {"model": spec, "batch": batch, "g": g, "precision": "bf16",
                    "mix": "uniform", "timed passes (median)": reps}  # fmt: skip
    sec.columns = ["model", "img/s", "x merged", "target"]
    done = []
    for n in counts:  # one count at a time: a count that does not fit is skipped alone
        if not sec.fits(f"{n} tasks", "count", 30):
            continue
        with sec.timing("count"):
            times = mt.measure(spec, g, batch, [n], a.device, torch.bfloat16, reps, **kw)
        done.append((n, times))
        _free()
    if not done:
        return
    merged = statistics.median([_median_rate(batch, t["merged"]) for _, t in done])
    sec.rows.append(["merged (one task)", merged, 1.0, "-"])
    for n, t in done:
        ips = _median_rate(batch, t[f"{n} tasks"])
        ref = _median_rate(batch, t["merged"])  # the merged model timed beside it
        sec.rows.append([f"{n} tasks, mixed batches", ips, ips / ref, ">= 0.8x"])


# -- 5. serving -------------------------------------------------------------------------------


def run_serve(sec: Section, a: argparse.Namespace) -> None:
    why = have_catalog()
    if why:
        sec.skipped.append(f"mgr serve: {why}")
        sec.status = "skipped"
        return
    import serve as sv

    if a.smoke:
        spec, g = "deit_tiny_patch16_224:img_size=32,depth=1", 96
        opts = ["--requests", "12", "--seconds", "5", "--concurrency", "4", "--threads", "1"]
    else:
        spec, g = "deit_tiny_patch16_224", 96
        opts = ["--requests", "4000", "--seconds", "20", "--concurrency", "32"]
    if not sec.fits("mgr serve, 1 and 8 tasks", "serve", 60):
        sec.status = "skipped"
        return
    args = sv.parser().parse_args(["--model", spec, "--groups", str(g), "--tasks", "1,8",
                                   "--kinds", "uniform,skewed", "--predict-requests", "0",
                                   "--device", a.device, *opts])  # fmt: skip
    sec.settings = {"model": spec, "g": g, "connections": args.concurrency,
                    "requests per phase (at most)": args.requests,
                    "seconds per phase (at most)": args.seconds,
                    "images per request": 1}  # fmt: skip
    sec.columns = ["scenario", "requests", "errors", "req/s", "p50 ms", "p99 ms", "images/batch"]
    for label, _n, _k, reqs, errs, tput, p50, p99, mb, _mixed, *_cpu in sv.measure(args):
        sec.rows.append([label, reqs, errs, tput, p50 * 1e3, p99 * 1e3, mb])
        if errs:
            sec.notes.append(f"{label}: {errs} errors")


RUNNERS: dict[str, Callable[[Section, argparse.Namespace], None]] = {
    "switch": run_switch,
    "inference": run_inference,
    "train": run_train,
    "multitask": run_multitask,
    "serve": run_serve,
}
MIN_S = {"switch": 20, "inference": 30, "train": 40, "multitask": 20, "serve": 40}


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:5]),
    )  # fmt: skip
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu [default: cuda]")
    ap.add_argument("--out", required=True, type=Path, help="folder for the tables and JSON")
    ap.add_argument("--budget-s", type=float, default=420.0, help="seconds for all sections")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, every section (CI)")
    order = ",".join(SECTIONS)
    ap.add_argument("--sections", default=order,
                    help=f"comma-separated, run in the fixed order {order}")  # fmt: skip
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    a = ap.parse_args(argv)
    t0 = time.monotonic()
    wanted = [s.strip() for s in a.sections.split(",") if s.strip()]
    if not wanted:
        ap.exit(2, f"error: --sections names no section (choose from {', '.join(SECTIONS)})\n")
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        ap.exit(2, f"error: unknown section {bad[0]!r} (choose from {', '.join(SECTIONS)})\n")
    if a.budget_s < 0:
        ap.exit(2, "error: --budget-s must be >= 0\n")
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        ap.exit(2, f"error: --device {a.device}: CUDA is not available here (try --device cpu)\n")
    if a.threads:
        torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    hw = hardware(a.device)
    hw_line = format_line(hw)
    print(hw_line, flush=True)
    end = t0 + a.budget_s
    order = [s for s in SECTIONS if s in wanted]
    sections: list[Section] = []
    failed = False
    for k, name in enumerate(order):
        now = time.monotonic()
        left = end - now
        share = SHARE[name] / sum(SHARE[s] for s in order[k:])
        sec = Section(SECTIONS.index(name) + 1, name, now + left * share, a.smoke)
        need = 0 if a.smoke else MIN_S[name]
        if left <= 0 or left < need:
            sec.status = "skipped"
            sec.skipped.append(f"whole section: budget exhausted ({max(left, 0):.0f} s left"
                               f"{f', needs ~{need} s' if need else ''})")  # fmt: skip
        else:
            print(f"\n== {sec.number}. {name}: up to {sec.left():.0f} s", flush=True)
            try:
                RUNNERS[name](sec, a)
            except Exception as e:  # one section's failure is reported, the others still run
                traceback.print_exc()
                sec.status, sec.error = "failed", f"{type(e).__name__}: {e}".splitlines()[0]
                failed = True
            if sec.status == "done" and sec.skipped:
                sec.status = "partial"
            sec.seconds = time.monotonic() - now
            _free()
        text = sec.markdown(hw_line)
        stem = f"{sec.number}_{name}"
        (a.out / f"{stem}.md").write_text(text)
        (a.out / f"{stem}.json").write_text(json.dumps(sec.record(hw), indent=1) + "\n")
        print(text, flush=True)
        sections.append(sec)
        # Rewritten after every section: a run killed at its time limit keeps what was done.
        lines = write_summary(a, hw, hw_line, sections, order, time.monotonic() - t0)
    print("\n".join(lines), flush=True)
    return 1 if failed else 0


def write_summary(
    a: argparse.Namespace,
    hw: dict,
    hw_line: str,
    sections: list[Section],
    order: list[str],
    total: float,
) -> list[str]:
    """``summary.md`` (the state of every section, every skipped row, then all the tables) and
    ``summary.json``; returns the summary's head lines."""
    done = {s.name for s in sections}
    pending = [n for n in order if n not in done]
    not_asked = [n for n in SECTIONS if n not in order]
    lines = [f"# GPU suite: {a.device}{' (smoke)' if a.smoke else ''}", "", hw_line, "",
             f"budget {a.budget_s:.0f} s, used {total:.0f} s", "",
             "| section | status | seconds | rows | skipped |",
             "|---|---|---|---|---|"]  # fmt: skip
    for s in sections:
        lines.append(f"| {s.number}. {s.name} | {s.status} | {s.seconds:.0f} | {len(s.rows)} | "
                     f"{len(s.skipped)} |")  # fmt: skip
    lines.append("")
    for s in sections:
        lines += [f"- {s.name}: skipped {x}" for x in s.skipped]
        if s.error:
            lines.append(f"- {s.name}: FAILED {s.error}")
    lines += [f"- {n}: not reached (the run was still going, or was killed)" for n in pending]
    lines += [f"- {n}: not asked for (--sections)" for n in not_asked]
    summary = "\n".join(lines) + "\n\n" + "\n".join(s.markdown(hw_line) for s in sections)
    (a.out / "summary.md").write_text(summary)
    (a.out / "summary.json").write_text(json.dumps({
        "hardware": hw, "device": a.device, "smoke": a.smoke, "budget_s": a.budget_s,
        "seconds": round(total, 1), "not_asked": not_asked, "not_reached": pending,
        "sections": [{"name": s.name, "status": s.status, "skipped": s.skipped,
                      "error": s.error, "file": f"{s.number}_{s.name}.json"} for s in sections],
    }, indent=1) + "\n")  # fmt: skip
    return lines


if __name__ == "__main__":
    sys.exit(main())
