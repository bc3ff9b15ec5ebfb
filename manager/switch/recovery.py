"""The cheap hook every catalog-opening command runs: finish an interrupted switch, if any.

When every deployment row of the host is idle this is one SELECT and two stats and imports
nothing heavy; only a row left in state 'switching' (a killed ``mgr switch``), or the single
live folder of a home from before live folders per backbone, loads torch and runs
``live.recover`` (which moves those files first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import select

from manager.catalog import Catalog
from manager.catalog.models import DEPLOY_SWITCHING, Deployment
from manager.home import Home

if TYPE_CHECKING:
    from manager.switch.live import SwitchReport


def switch_pending(catalog: Catalog) -> bool:
    """Whether one of this home's backbones is in the middle of a switch (one SELECT)."""
    host = catalog.home.host
    with catalog.session(write=False) as s:
        found = s.scalar(
            select(Deployment.id)
            .where(Deployment.host == host, Deployment.state == DEPLOY_SWITCHING)
            .limit(1)
        )
        return found is not None


def legacy_live(home: Home) -> bool:
    """Whether ``live/`` still holds the single live folder's files of an older home (stats)."""
    live = home.root / "live"
    return (live / "backbone.safetensors").exists() or (live / "head.safetensors").exists()


def recover_if_needed(
    home: Home, catalog: Catalog, warn: Callable[[str], None] | None = None
) -> SwitchReport | None:
    """Finish or roll back an interrupted switch; returns its `SwitchReport` or None.

    ``warn(message)`` reports what was done (or why it failed: a failed recovery must not lock
    the user out of every other command, so it is reported and left for ``mgr status``).
    """
    if not switch_pending(catalog) and not legacy_live(home):
        return None
    from manager.errors import MgrError
    from manager.switch.live import recover

    try:
        report = recover(home, catalog)
    except MgrError as exc:
        if warn is not None:
            warn(f"an interrupted switch could not be finished: {exc}")
        return None
    if report is not None and warn is not None:
        what = f"{report.task}@{report.version}" if report.task else "the backbone alone"
        verb = (
            "rolled back an interrupted switch; live"
            if report.rolled_back
            else "finished an interrupted switch to"
        )
        warn(f"{verb} {what}" + "".join(f" ({n})" for n in report.notes))
    return report
