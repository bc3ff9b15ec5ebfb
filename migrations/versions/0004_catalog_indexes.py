"""Indexes for a catalog of many tasks: reports aggregate in SQL, and deletes stay O(1).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

- ``ix_adapter_versions_status_bytes``: the bytes of all live versions (storage totals, the
  global budget and its pre-check before every training) from a covering index, not the table.
- ``ix_tasks_backbone``: the storage totals group every task by backbone spec and bound backbone.
- ``ix_adapter_versions_parent_id``, ``ix_tasks_active_version_id``: deleting a version (gc,
  ``task remove``) looks up what refers to it (ON DELETE SET NULL); without these, each deleted
  version scanned both tables (about 1 s at 100k tasks).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXES = [
    ("ix_adapter_versions_status_bytes", "adapter_versions", ["status", "bytes"]),
    ("ix_adapter_versions_parent_id", "adapter_versions", ["parent_id"]),
    ("ix_tasks_backbone", "tasks", ["backbone_spec", "backbone_id", "num_classes"]),
    ("ix_tasks_active_version_id", "tasks", ["active_version_id"]),
]


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
