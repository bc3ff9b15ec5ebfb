"""Each host's deployment row: what is live in one home's live files."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from manager.catalog.models import DEPLOY_IDLE, Deployment

UNCLAIMED = ""  # the row a single-host catalog had before deployments were per host


def get_deployment(s: Session, host: str) -> Deployment:
    """`host`'s deployment row; created idle (or claimed from a migrated catalog) if missing."""
    dep = s.scalar(select(Deployment).where(Deployment.host == host))
    if dep is not None:
        return dep
    if s.get_bind().url.query.get("immutable") == "1":  # a read-only home: nothing live there
        return Deployment(host=host, state=DEPLOY_IDLE)
    dep = s.scalar(select(Deployment).where(Deployment.host == UNCLAIMED))
    if dep is not None:
        dep.host = host
    else:
        dep = Deployment(host=host, state=DEPLOY_IDLE)
        s.add(dep)
    s.flush()
    return dep


def live_elsewhere(s: Session, task_id: int, host: str) -> list[str]:
    """The other hosts where a version of the task is live (or being switched to)."""
    rows = s.scalars(
        select(Deployment.host).where(Deployment.host != host, Deployment.task_id == task_id)
    )
    return sorted(rows)
