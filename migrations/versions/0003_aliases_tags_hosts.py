"""Aliases and tags on versions; one deployment row per host; the host on events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

The single deployment row (id 1) becomes the row of host ``""``: unclaimed, taken over by the
first home that opens the catalog (``catalog.deployment.get_deployment``), so a single-host catalog
keeps what is live across the upgrade.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployment") as batch:
        batch.add_column(
            sa.Column("host", sa.String(length=255), nullable=False, server_default="")
        )
        batch.drop_constraint("ck_deployment_single_row", type_="check")
        batch.create_unique_constraint("uq_deployment_host", ["host"])
    # The default only filled the existing row; new rows always name their host.
    with op.batch_alter_table("deployment") as batch:
        batch.alter_column("host", server_default=None, existing_type=sa.String(length=255))
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("host", sa.String(length=255), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # Row 1 was inserted with its id, which left the id sequence behind: the next host's row
        # would get id 1 again.
        op.execute(
            "SELECT setval(pg_get_serial_sequence('deployment', 'id'), coalesce(max(id), 1), "
            "max(id) IS NOT NULL) FROM deployment"
        )

    op.create_table(
        "aliases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_aliases_task_id_tasks", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name="fk_aliases_version_id_adapter_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_aliases"),
        sa.UniqueConstraint("task_id", "name", name="uq_aliases_task_id_name"),
    )
    op.create_index("ix_aliases_version_id", "aliases", ["version_id"])
    op.create_table(
        "version_tags",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name="fk_version_tags_version_id_adapter_versions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("version_id", "name", name="pk_version_tags"),
    )
    op.create_index("ix_version_tags_name", "version_tags", ["name"])


def downgrade() -> None:
    op.drop_index("ix_version_tags_name", table_name="version_tags")
    op.drop_table("version_tags")
    op.drop_index("ix_aliases_version_id", table_name="aliases")
    op.drop_table("aliases")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("host")
    # Back to one row: keep the claimed row with the smallest id as row 1.
    conn = op.get_bind()
    keep = conn.execute(sa.text("SELECT min(id) FROM deployment")).scalar()
    if keep is not None:
        conn.execute(sa.text("DELETE FROM deployment WHERE id <> :k"), {"k": keep})
        conn.execute(sa.text("UPDATE deployment SET id = 1 WHERE id = :k"), {"k": keep})
    with op.batch_alter_table("deployment") as batch:
        batch.drop_constraint("uq_deployment_host", type_="unique")
        batch.drop_column("host")
        # The naming convention prefixes this name again, as in 0001: the constraint gets 0002's
        # name back ("ck_deployment_ck_deployment_single_row"), which upgrade() drops by.
        batch.create_check_constraint("ck_deployment_single_row", "id = 1")
