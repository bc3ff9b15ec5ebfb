"""The catalog's identity: one random id, recorded also in every home that uses the catalog.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

``mgr gc`` deletes files that no row of the catalog records; aimed at the wrong catalog (an
empty ``sqlite://``, another PostgreSQL database) it would take a whole home for leftovers.
The home records the id of its catalog (``<home>/catalog-id``) and gc refuses when they differ
(``manager/catalog/identity.py``). An upgraded catalog gets its id here, like a new one.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "catalog_identity",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_catalog_identity"),
    )
    op.bulk_insert(table, [{"id": secrets.token_hex(16), "created_at": datetime.now(timezone.utc)}])


def downgrade() -> None:
    op.drop_table("catalog_identity")
