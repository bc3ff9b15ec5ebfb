"""Live state per backbone: one deployment row per (host, backbone).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

A home keeps one set of live files per bound backbone (``live/<hash>/``), each with its own
crash protocol, so the deployment row is keyed by ``(host, backbone_id)`` instead of ``host``.
Today's single row per host already names the backbone its live files hold: it becomes that
backbone's row unchanged (what was live stays live, a switch in progress stays in progress). The
files move from ``live/`` to ``live/<hash>/`` on the first command that opens the home
(``manager.switch.live.migrate_single_live``: renames, crash-safe, idempotent).

Downgrade keeps each host's most recently updated row (the other backbones' live folders are
left on disk, unreferenced).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployment") as batch:
        batch.drop_constraint("uq_deployment_host", type_="unique")
        batch.create_unique_constraint("uq_deployment_host_backbone_id", ["host", "backbone_id"])


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, host FROM deployment ORDER BY host, updated_at DESC, id DESC")
    ).all()
    seen: set[str] = set()
    for row_id, host in rows:
        if host in seen:
            conn.execute(sa.text("DELETE FROM deployment WHERE id = :i"), {"i": row_id})
        seen.add(host)
    with op.batch_alter_table("deployment") as batch:
        batch.drop_constraint("uq_deployment_host_backbone_id", type_="unique")
        batch.create_unique_constraint("uq_deployment_host", ["host"])
