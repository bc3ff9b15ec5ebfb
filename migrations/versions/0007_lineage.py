"""Data lineage and label sets of adapter versions (issue 21).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

- ``adapter_versions.lineage`` (JSON, nullable): the version's training and evaluation data
  (data set, root, splits, image counts per class, a fingerprint of the file list), its class
  names in label order (the set it serves), the hash of its settings, its parent and warm start.
  Versions recorded before this revision have none: they serve the task's class names.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.add_column(sa.Column("lineage", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite it rebuilds adapter_versions, and dropping the old table under
    # foreign_keys=ON sets deployment.version_id (ON DELETE SET NULL): what was live would be lost.
    # ALTER TABLE ... DROP COLUMN (SQLite >= 3.35) keeps every row where it is.
    op.drop_column("adapter_versions", "lineage")
