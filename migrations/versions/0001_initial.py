"""Initial catalog: backbones, tasks, adapter versions, deployment, events, budgets.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# tasks.active_version_id -> adapter_versions and adapter_versions.task_id -> tasks form a cycle,
# so this foreign key is added after both tables exist (batch mode: SQLite rebuilds the table).
ACTIVE_FK = "fk_tasks_active_version_id_adapter_versions"


def _created_at() -> sa.Column:
    return sa.Column("created_at", sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "backbones",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("timm_name", sa.String(length=200), nullable=False),
        sa.Column("spec", sa.String(length=500), nullable=False),
        sa.Column("weights_source", sa.String(length=1000), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("param_count", sa.BigInteger(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name="pk_backbones"),
        sa.UniqueConstraint("content_hash", name="uq_backbones_content_hash"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("task_name", sa.String(length=64), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("ix_events_at", "events", ["at"])
    op.create_index("ix_events_task_name", "events", ["task_name"])
    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("dataset", sa.String(length=200), nullable=False),
        sa.Column("data_root", sa.String(length=1000), nullable=True),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("backbone_spec", sa.String(length=500), nullable=False),
        sa.Column("weights", sa.String(length=1000), nullable=True),
        sa.Column("backbone_id", sa.Integer(), nullable=True),
        sa.Column("active_version_id", sa.Integer(), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["backbone_id"],
            ["backbones.id"],
            name="fk_tasks_backbone_id_backbones",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_tasks"),
        sa.UniqueConstraint("name", name="uq_tasks_name"),
    )
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("structure", sa.JSON(), nullable=False),
        sa.Column("hyperparams", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1000), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["parent_id"],
            ["adapter_versions.id"],
            name="fk_adapter_versions_parent_id_adapter_versions",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_adapter_versions_task_id_tasks", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_adapter_versions"),
        sa.UniqueConstraint("task_id", "number", name="uq_adapter_versions_task_id_number"),
    )
    with op.batch_alter_table("tasks") as batch:
        batch.create_foreign_key(
            ACTIVE_FK, "adapter_versions", ["active_version_id"], ["id"], ondelete="SET NULL"
        )
    op.create_table(
        "budgets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("scope", sa.String(length=80), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("max_bytes", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "(task_id IS NULL AND scope = 'global') OR (task_id IS NOT NULL AND scope <> 'global')",
            name="ck_budgets_scope_matches_task",
        ),
        sa.CheckConstraint("max_bytes >= 0", name="ck_budgets_max_bytes_nonnegative"),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_budgets_task_id_tasks", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_budgets"),
        sa.UniqueConstraint("scope", name="uq_budgets_scope"),
        sa.UniqueConstraint("task_id", name="uq_budgets_task_id"),
    )
    deployment = op.create_table(
        "deployment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("backbone_id", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("pending_version_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name="ck_deployment_single_row"),
        sa.ForeignKeyConstraint(
            ["backbone_id"],
            ["backbones.id"],
            name="fk_deployment_backbone_id_backbones",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["pending_version_id"],
            ["adapter_versions.id"],
            name="fk_deployment_pending_version_id_adapter_versions",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["tasks.id"], name="fk_deployment_task_id_tasks", ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["adapter_versions.id"],
            name="fk_deployment_version_id_adapter_versions",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_deployment"),
    )
    # The switcher's single state row always exists, so nobody has to race to create it.
    op.bulk_insert(
        deployment, [{"id": 1, "state": "idle", "updated_at": datetime.now(timezone.utc)}]
    )


def downgrade() -> None:
    op.drop_table("deployment")
    op.drop_table("budgets")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_constraint(ACTIVE_FK, type_="foreignkey")
    op.drop_table("adapter_versions")
    op.drop_table("tasks")
    op.drop_index("ix_events_task_name", table_name="events")
    op.drop_index("ix_events_at", table_name="events")
    op.drop_table("events")
    op.drop_table("backbones")
