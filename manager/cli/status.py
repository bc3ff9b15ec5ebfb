"""``mgr status``: what is live, and whether the live files are exactly what the catalog says."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from manager.cli.app import App, echo_json, json_option, pass_app
from manager.errors import MgrError

if TYPE_CHECKING:
    from manager.switch.status import HomeStatus, StatusReport


@click.command("status")
@click.option(
    "--verify-bits",
    is_flag=True,
    help="Compare every live tensor with a fresh merge of W0 and the live delta, and hash the "
    "backbone and artifact files (O(backbone): seconds). Without it, only when the cheap "
    "check fails.",
)
@click.option(
    "--no-verify",
    is_flag=True,
    help="Only the cheap check, even where it fails (never the bit-for-bit comparison).",
)
@json_option
@pass_app
def command(app: App, verify_bits: bool, no_verify: bool, as_json: bool) -> None:
    """Show every live backbone, the task and version live on it, and check its live files.

    By default the check is cheap (headers, sizes and times; no tensor is read): the live file
    has the backbone file's layout and has not been modified since the last switch, and the
    head file names the live version. Where that fails, the full check runs: the live weights
    must equal a fresh merge of W0 and the live version's delta bit for bit (every tensor
    compared), the head file hold the delta's head, and the backbone and artifact files hash to
    what the catalog recorded; --verify-bits runs it always. A live version that is not its
    task's champion (e.g. after 'mgr rollback') is noted. Exits 1 if a check fails.
    """
    from manager.switch.status import AUTO, BITS, QUICK, live_status

    if verify_bits and no_verify:
        raise MgrError("--verify-bits and --no-verify contradict each other; give one")
    mode = BITS if verify_bits else QUICK if no_verify else AUTO
    st = live_status(app.home, app.catalog, verify=mode)
    if as_json:
        echo_json(st.to_dict())
    else:
        click.echo(render(st))
    if st.verified is False:
        click.get_current_context().exit(1)


def render(home: HomeStatus) -> str:
    if not home.backbones:
        return f"live:      nothing (no backbone loaded)\nverified:  {home.verification}"
    blocks = [_render_one(st) for st in home.backbones]
    return "\n\n".join(blocks)


def _render_one(st: StatusReport) -> str:
    live = f"{st.task}@{st.version} ({st.method})" if st.task else "the backbone alone"
    lines = []
    if st.backbone:
        bb = st.backbone
        lines.append(f"backbone:  {bb['spec']} (weights {bb['content_hash'][:12]})")
    lines.append(f"live:      {live}")
    lines += [f"  note: {n}" for n in st.notes]
    lines.append(f"state:     {st.state}" + (f" -> {st.pending}" if st.pending else ""))
    lines.append(f"files:     {st.live_file} + head.safetensors")
    if st.verified is None:
        lines.append(f"verified:  not checked ({st.verification})")
    elif st.verified:
        lines.append(f"verified:  yes: {st.verification}")
    else:
        lines.append("verified:  NO ('mgr switch --repair' rebuilds the live files)")
        lines += [f"  problem: {p}" for p in st.problems]
    return "\n".join(lines)
