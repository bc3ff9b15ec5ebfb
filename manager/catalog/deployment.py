"""Each host's deployment rows: what is live in one home's live files, one row per backbone.

A home keeps one set of live files per bound backbone (``live/<hash>/``); the row of
``(host, backbone)`` says which version those files hold and carries that backbone's crash
protocol (state, pending version). A row with no backbone is a home that never switched.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from manager.catalog.models import DEPLOY_IDLE, Deployment

UNCLAIMED = ""  # the host of rows a single-host catalog had before deployments were per host


def _read_only(s: Session) -> bool:
    """A read-only home's catalog (opened ``immutable``): nothing written, nothing live."""
    return s.get_bind().url.query.get("immutable") == "1"


def _claim(s: Session, host: str) -> None:
    """The first home to open a migrated catalog takes over its unclaimed rows."""
    if _read_only(s):
        return
    if s.scalar(select(Deployment.id).where(Deployment.host == host).limit(1)) is None:
        s.execute(
            update(Deployment).where(Deployment.host == UNCLAIMED).values(host=host),
            execution_options={"synchronize_session": False},
        )
        s.expire_all()


def get_deployment(s: Session, host: str, backbone_id: int | None = None) -> Deployment:
    """`host`'s row for ``backbone_id``, created idle (or claimed) if missing.

    Without ``backbone_id``: the host's most recently updated row (created if it has none), for
    callers that only need "a row of this host".
    """
    _claim(s, host)
    if backbone_id is None:
        dep = s.scalar(
            select(Deployment)
            .where(Deployment.host == host)
            .order_by(Deployment.updated_at.desc(), Deployment.id.desc())
            .limit(1)
        )
    else:
        dep = s.scalar(
            select(Deployment).where(Deployment.host == host, Deployment.backbone_id == backbone_id)
        )
        if dep is None:  # a home that never switched: its blank row takes the backbone
            dep = s.scalar(
                select(Deployment).where(
                    Deployment.host == host,
                    Deployment.backbone_id.is_(None),
                    Deployment.version_id.is_(None),
                    Deployment.pending_version_id.is_(None),
                )
            )
            if dep is not None and not _read_only(s):
                dep.backbone_id = backbone_id
    if dep is None:
        dep = Deployment(host=host, state=DEPLOY_IDLE, backbone_id=backbone_id)
        if _read_only(s):
            return dep
        s.add(dep)
    s.flush()
    return dep


def find_deployment(s: Session, host: str, backbone_id: int) -> Deployment | None:
    """`host`'s row for ``backbone_id``, if it has one (a read: nothing is created)."""
    _claim(s, host)
    return s.scalar(
        select(Deployment).where(Deployment.host == host, Deployment.backbone_id == backbone_id)
    )


def host_deployments(s: Session, host: str, blank: bool = False) -> list[Deployment]:
    """`host`'s rows that have a backbone (live files), by backbone id; ``blank``: also the
    row of a home that never switched."""
    _claim(s, host)
    query = select(Deployment).where(Deployment.host == host)
    if not blank:
        query = query.where(Deployment.backbone_id.is_not(None))
    return list(s.scalars(query.order_by(Deployment.backbone_id, Deployment.id)))


def live_elsewhere(s: Session, task_id: int, host: str) -> list[str]:
    """The other hosts where a version of the task is live (or being switched to)."""
    rows = s.scalars(
        select(Deployment.host).where(Deployment.host != host, Deployment.task_id == task_id)
    )
    return sorted(set(rows))
