"""The switcher's single deployment row."""

from __future__ import annotations

from sqlalchemy.orm import Session

from manager.catalog.models import DEPLOY_IDLE, Deployment


def get_deployment(s: Session) -> Deployment:
    """The deployment row (id 1), created idle if it is missing."""
    dep = s.get(Deployment, 1)
    if dep is None:
        dep = Deployment(id=1, state=DEPLOY_IDLE)
        s.add(dep)
        s.flush()
    return dep
