"""``mgr storage --plot``: the storage report as a picture, bytes against top-1, one panel a task.

Each version is a point (x: stored bytes, log scale; y: top-1 %), coloured by method; the active
version is ringed. Vertical lines mark the bytes of the task's versions together (what its budget
counts), the task's budget, the global budget and what one full fine-tuned copy would cost.
Versions without a recorded top-1 sit on the panel's floor, hollow. The data drawn is embedded in
the PNG as JSON (text chunk ``mgr-storage``), so the picture can be checked against
``mgr storage --json``.

matplotlib is imported inside the functions, with the Agg backend, so ``mgr`` stays fast and
works without a display.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

from manager.errors import MgrError

DEFAULT_SIZE = (1200, 800)  # pixels
MIN_SIDE, MAX_SIDE = 300, 8000
DPI = 100
METADATA_KEY = "mgr-storage"
COLUMNS = 3  # panels per row
METHOD_COLORS = {
    "consolidator": "#1f77b4",
    "linear": "#ff7f0e",
    "bitfit": "#2ca02c",
    "bitfit_ln": "#98df8a",
    "lora": "#9467bd",
    "full": "#d62728",
}
OTHER_COLOR = "#7f7f7f"


def parse_size(text: str) -> tuple[int, int]:
    """``"1200x800"`` -> ``(1200, 800)`` pixels, each side 300..8000; else MgrError."""
    w, sep, h = str(text).lower().partition("x")
    if not (sep and w.isascii() and w.isdigit() and h.isascii() and h.isdigit()):
        raise MgrError(f"bad plot size {text!r}: use WIDTHxHEIGHT in pixels, e.g. 1200x800")
    size = (int(w), int(h))
    if not all(MIN_SIDE <= s <= MAX_SIDE for s in size):
        raise MgrError(f"bad plot size {text!r}: each side must be {MIN_SIDE}..{MAX_SIDE} pixels")
    return size


def plot_data(report: dict[str, Any]) -> dict[str, Any]:
    """What the picture shows, from ``StorageReport.to_dict()``: deleted versions left out."""
    tasks = []
    for t in report["tasks"]:
        versions = [
            {k: v[k] for k in ("number", "method", "bytes", "top1", "active")}
            for v in t["versions"]
            if v["status"] != "deleted"
        ]
        tasks.append(
            {
                "task": t["task"],
                "used_bytes": t["used_bytes"],
                "budget_bytes": t["budget_bytes"],
                "full_finetune_bytes": t["full_finetune_bytes"],
                "versions": versions,
            }
        )
    return {"tasks": tasks, "global_budget_bytes": report["totals"]["global_budget_bytes"]}


def storage_png(report: dict[str, Any], size: tuple[int, int] = DEFAULT_SIZE) -> bytes:
    """The PNG bytes of the report's picture, exactly ``size`` pixels (width, height)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = plot_data(report)
    # Half a pixel over: the canvas truncates width * dpi, which float rounding can put below.
    fig = Figure(figsize=((size[0] + 0.5) / DPI, (size[1] + 0.5) / DPI), dpi=DPI)
    FigureCanvasAgg(fig)  # the Agg canvas, whatever backend pyplot would pick: no display needed
    with_versions = [t for t in data["tasks"] if t["versions"]]
    if not with_versions:
        _empty(fig, data)
    else:
        _panels(fig, with_versions, data["global_budget_bytes"])
    buf = io.BytesIO()
    fig.savefig(
        buf, format="png", dpi=DPI, metadata={METADATA_KEY: json.dumps(data), "Software": "mgr"}
    )
    return buf.getvalue()


def _empty(fig: Any, data: dict[str, Any]) -> None:
    names = ", ".join(t["task"] for t in data["tasks"][:5])
    hint = f"train one with 'mgr train {data['tasks'][0]['task']}'" if names else "add a task"
    fig.text(0.5, 0.55, "no versions yet", ha="center", va="center", fontsize=20)
    fig.text(0.5, 0.45, f"{f'tasks: {names}; ' if names else ''}{hint}", ha="center", fontsize=11)


def _panels(fig: Any, tasks: list[dict[str, Any]], global_budget: int | None) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    from manager.units import format_size

    cols = min(COLUMNS, len(tasks))
    rows = math.ceil(len(tasks) / cols)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    methods: list[str] = []
    drawn: dict[str, tuple[str, str]] = {}  # legend entries of the lines actually drawn
    hollow = False
    for ax, task in zip(axes.flat, tasks, strict=False):
        lines = [
            # What a budget is compared with: the task's versions together.
            (task["used_bytes"], "the task's versions together", "#7f7f7f", "-."),
            (task["budget_bytes"], "task budget", "#d62728", "-"),
            (global_budget, "global budget", "#ff7f0e", "--"),
            (task["full_finetune_bytes"], "full fine-tune (one copy)", "black", ":"),
        ]
        xs = [v["bytes"] for v in task["versions"] if v["bytes"] > 0]
        xs += [x for x, *_ in lines if x]
        lo, hi = min(xs or [1]), max(xs or [1])
        ax.set_xscale("log")
        ax.set_xlim(lo / 3, hi * 3)
        ax.set_ylim(0, 105)
        for x, label, color, style in lines:
            if x:
                ax.axvline(x, color=color, linestyle=style, linewidth=1.5)
                drawn[label] = (color, style)
        floor = ax.get_xaxis_transform()  # x in data, y in axes fraction
        for v in task["versions"]:
            if v["method"] not in methods:
                methods.append(v["method"])
            color = METHOD_COLORS.get(v["method"], OTHER_COLOR)
            x = max(v["bytes"], 1)
            if v["top1"] is None:  # on the floor, hollow: stored, never evaluated
                hollow = True
                ax.scatter([x], [0.03], transform=floor, s=60, facecolors="none", edgecolors=color)
                continue
            ax.scatter([x], [v["top1"]], s=60, color=color, zorder=3)
            if v["active"]:
                ax.scatter([x], [v["top1"]], s=220, facecolors="none", edgecolors="black")
            ax.annotate(
                f"v{v['number']}",
                (x, v["top1"]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
            )
        ax.set_title(task["task"])
        ax.set_xlabel("stored bytes (log)")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda b, _pos: format_size(int(b))))
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("top-1 %")
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
    handles = [
        Line2D([], [], marker="o", linestyle="", color=METHOD_COLORS.get(m, OTHER_COLOR), label=m)
        for m in methods
    ]
    handles += [
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="black",
               markersize=11, label="active"),
    ]  # fmt: skip
    handles += [Line2D([], [], color=c, linestyle=ls, label=k) for k, (c, ls) in drawn.items()]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), frameon=False)
    note = " (hollow: no top-1 recorded)" if hollow else ""
    fig.suptitle(f"mgr storage: each version's bytes against its top-1{note}")
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
