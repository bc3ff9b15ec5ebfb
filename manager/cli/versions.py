"""``mgr versions TASK``: a task's adapter versions with their metrics, bytes and settings."""

from __future__ import annotations

import click
from sqlalchemy.orm import Session

from manager.catalog import tasks as task_ops
from manager.catalog.models import VERSION_DELETED
from manager.catalog.views import version_dict
from manager.cli.app import App, console, echo_json, json_option, pass_app
from manager.errors import MgrError
from manager.names import parse_version_selector
from manager.units import format_size


def _structure(v: dict) -> str:
    if v["method"] == "consolidator" and v["structure"]:
        return "g=" + ",".join(f"{g}{'s' if s else ''}" for g, s in v["structure"])
    if v["method"] == "lora":
        return f"r={v['hyperparams'].get('lora_rank', '?')}"
    return "-"


def _pct(value: float | None) -> str:
    return f"{value:.1f}" if isinstance(value, (int, float)) else "-"


def _num(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "-"
    return "0" if value == 0 else f"{value:.1e}".replace("e-0", "e-").replace("e+0", "e")


def _settings(v: dict) -> str:
    """The short form: base lr, LayerNorm / branch lr where they differ, weight decay, DropPath."""
    h = v["hyperparams"] or {}
    parts = [f"lr {_num(h.get('lr'))}"]
    for key, label in (("lr_norm", "norm"), ("lr_branch", "branch")):
        if h.get(key) is not None and h.get(key) != h.get("lr"):
            parts.append(f"{label} {_num(h[key])}")
    parts.append(f"wd {_num(h.get('weight_decay'))}")
    if v["method"] == "consolidator":
        parts.append(f"dp {h.get('drop_path', 0):g}")
    tune = h.get("tune")
    if tune:
        parts.append(f"(tuned: {len(tune.get('trials', []))} trials on {tune.get('split')})")
    return " ".join(parts)


@click.command("versions")
@click.argument("task", metavar="TASK[@VERSION|@ALIAS]")
@click.option(
    "--trials",
    is_flag=True,
    help="Also list every trial of the searches that chose tuned versions' settings "
    "(mgr train --tune); --json always holds them, under hyperparams.tune.",
)
@click.option(
    "--classes",
    "show_classes",
    is_flag=True,
    help="Also show each version's classes, top-1 per class and the gate's decision with its "
    "worst classes (--json always holds them, under metrics.per_class_top1 and gate).",
)
@json_option
@pass_app
def command(app: App, task: str, trials: bool, show_classes: bool, as_json: bool) -> None:
    """List TASK's adapter versions: method, structure, accuracy, bytes, training settings.

    \b
    Examples:
      mgr versions pets
      mgr versions pets@3 --trials      # one version, with the trials of its --tune search
      mgr versions pets@4 --classes     # its classes, per-class top-1, the gate's worst classes
    """
    name, selector = parse_version_selector(task)
    with app.session(write=False) as s:
        rows, number = _rows(s, name, selector)
    if number is not None:
        rows = [v for v in rows if v["number"] == number]
        if not rows:
            raise MgrError(f"task {name!r} has no version {number}")
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"{name}: no versions yet (train one with 'mgr train {name}')")
        return
    from rich.table import Table

    table = Table(
        "version",
        "method",
        "structure",
        "top-1 %",
        "top-5 %",
        "bytes",
        "settings",
        "status",
        "aliases",
        "tags",
        "lineage",
        "created",
        title=f"{name}: adapter versions (* = active, the champion)",
    )
    for v in rows:
        m = v["metrics"] or {}
        size = format_size(v["bytes"]) if v["status"] != VERSION_DELETED else "-"
        table.add_row(
            f"v{v['number']}{' *' if v['active'] else ''}",
            v["method"],
            _structure(v),
            _pct(m.get("top1")),
            _pct(m.get("top5")),
            size,
            _settings(v),
            v["status"],
            ",".join(v["aliases"]) or "-",
            ",".join(v["tags"]) or "-",
            _lineage(v),
            (v["created_at"] or "")[:19],
        )
    console().print(table)
    if trials:
        _print_trials(rows)
    if show_classes:
        for v in rows:
            _print_classes(v)


def _rows(s: Session, name: str, selector: str | None) -> tuple[list[dict], int | None]:
    """Every version of task `name` as --json prints it (aliases, tags, classes, lineage,
    gate), and the number `selector` names (None: all)."""
    from manager.catalog.aliases import aliases_by_version, tags_by_version
    from manager.catalog.lineage import describe_diff, gate_decisions, version_classes
    from manager.catalog.refs import version_number

    t = task_ops.get_task(s, name)
    number = version_number(s, name, selector)
    active = t.active_version.number if t.active_version else None
    rows = [{**version_dict(v), "active": v.number == active} for v in t.versions]
    # Aliases (champion = active) and tags of each version.
    named, tagged = aliases_by_version(s, t), tags_by_version(s, t)
    by_id = {v.id: v for v in t.versions}
    gates = gate_decisions(s, t)
    for v, row in zip(t.versions, rows, strict=True):
        parent = by_id.get(v.parent_id) if v.parent_id else None
        row.update(
            aliases=named.get(v.id, []),
            tags=tagged.get(v.id, []),
            classes=version_classes(v),
            changes=describe_diff(v.lineage, parent.lineage if parent else None),
            gate=gates.get(v.id),
        )
    return rows, number


def _lineage(v: dict) -> str:
    """``from v2: +120 images, 2 new classes; init pets@2 (head grown)``."""
    lin = v.get("lineage") or {}
    text = v.get("changes") or "-"
    if lin.get("parent") is not None:
        text = f"from v{lin['parent']}: {text}"
    init = lin.get("init")
    if init:
        text += f"; init {init['from']} (head {init['head']})"
    return text


def _print_classes(v: dict) -> None:
    from rich.table import Table

    per_class = (v["metrics"] or {}).get("per_class_top1") or {}
    gate = v.get("gate") or {}
    worst = {w["class"]: w for w in gate.get("worst_classes") or []}
    title = f"v{v['number']}: {len(v['classes'])} classes"
    if gate:
        verdict = "promoted" if gate.get("promoted") else "refused"
        title += f"; gate: {verdict} ({gate.get('reason')})"
    table = Table("index", "class", "top-1 %", "gate: champion %", "gate: new %", title=title)
    for i, name in enumerate(v["classes"]):
        w = worst.get(name)
        table.add_row(
            str(i),
            name,
            _pct(per_class.get(name)),
            _pct(w["champion"]) if w else "-",
            _pct(w["new"]) if w else "-",
        )
    console().print(table)


def _print_trials(rows: list[dict]) -> None:
    from rich.table import Table

    tuned = [v for v in rows if (v["hyperparams"] or {}).get("tune")]
    if not tuned:
        click.echo("no tuned versions (train one with 'mgr train TASK --tune')")
    for v in tuned:
        tune = v["hyperparams"]["tune"]
        chosen = tune["chosen"]
        table = Table(
            "trial",
            "config",
            "epochs",
            "lr",
            "norms lr",
            "branches lr",
            "weight decay",
            "DropPath",
            f"{tune['split']} top-1 %",
            title=f"v{v['number']}: {tune['method']} over {', '.join(tune['knobs'])}, "
            f"{tune['configs']} configs, ~{tune['cost']}x one run (* = chosen)",
        )
        last = max(t["rung"] for t in tune["trials"])
        for i, t in enumerate(tune["trials"], 1):
            pick = t["rung"] == last and all(
                t.get(k) == chosen.get(k)
                for k in ("lr", "lr_norm", "lr_branch", "weight_decay", "drop_path")
            )
            table.add_row(
                f"{i}{' *' if pick else ''}",
                str(t["config"]),
                str(t["epochs"]),
                _num(t["lr"]),
                _num(t.get("lr_norm")),
                _num(t.get("lr_branch")),
                _num(t["weight_decay"]),
                f"{t['drop_path']:g}",
                _pct(t["score"]) if t.get("score") is not None else "diverged",
            )
        console().print(table)
