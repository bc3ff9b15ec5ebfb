"""The catalog's tables, as SQLAlchemy 2.0 typed ORM classes.

Schema changes go through Alembic (``migrations/``); ``tests/test_migrations.py`` checks that
these classes and the migrations agree.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so migrations can refer to them on every database.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

VERSION_READY = "ready"
VERSION_DELETED = "deleted"
DEPLOY_IDLE = "idle"
DEPLOY_SWITCHING = "switching"
GLOBAL_SCOPE = "global"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def task_scope(task_id: int) -> str:
    """The budgets.scope value of a task's budget."""
    return f"task:{task_id}"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Backbone(Base):
    """A materialised backbone: its weights file under the home, identified by content hash."""

    __tablename__ = "backbones"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    timm_name: Mapped[str] = mapped_column(String(200))
    spec: Mapped[str] = mapped_column(String(500))
    weights_source: Mapped[str] = mapped_column(String(1000))
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    param_count: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(1000))
    # st_mtime_ns of the file when it was written or last hash-checked: a switch compares size and
    # mtime (cheap) and re-hashes the file only when they differ.
    file_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Task(Base):
    """A registered task: its data set, classes and the backbone it adapts."""

    __tablename__ = "tasks"
    # The storage report's totals group every task by backbone: one ordered pass over this
    # (covering) index instead of the whole table.
    __table_args__ = (Index("ix_tasks_backbone", "backbone_spec", "backbone_id", "num_classes"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    dataset: Mapped[str] = mapped_column(String(200))
    data_root: Mapped[str | None] = mapped_column(String(1000))
    num_classes: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[str]] = mapped_column(JSON)
    backbone_spec: Mapped[str] = mapped_column(String(500))
    weights: Mapped[str | None] = mapped_column(String(1000))
    # Bound when the task is first trained; a backbone in use cannot be deleted.
    backbone_id: Mapped[int | None] = mapped_column(ForeignKey("backbones.id", ondelete="RESTRICT"))
    # tasks <-> adapter_versions reference each other; use_alter breaks the cycle at CREATE time.
    # Indexed, as parent_id: deleting a version looks up what refers to it (ON DELETE SET NULL).
    active_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="SET NULL", use_alter=True), index=True
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    backbone: Mapped[Backbone | None] = relationship()
    versions: Mapped[list[AdapterVersion]] = relationship(
        back_populates="task",
        foreign_keys="AdapterVersion.task_id",
        order_by="AdapterVersion.number",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )
    active_version: Mapped[AdapterVersion | None] = relationship(
        foreign_keys=[active_version_id], post_update=True
    )


class AdapterVersion(Base):
    """One trained, consolidated adapter of a task: an artifact file plus what made it."""

    __tablename__ = "adapter_versions"
    __table_args__ = (
        UniqueConstraint("task_id", "number"),
        # Bytes of all live versions (totals, the global budget's pre-check): a covering index.
        Index("ix_adapter_versions_status_bytes", "status", "bytes"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(32))
    structure: Mapped[Any] = mapped_column(JSON)
    hyperparams: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    bytes: Mapped[int] = mapped_column(BigInteger)
    content_hash: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1000))
    status: Mapped[str] = mapped_column(String(16), default=VERSION_READY)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="SET NULL"), index=True
    )
    # What made it (manager.train.lineage): its data (set, root, splits, counts per class, file
    # fingerprint), its class names in label order, its settings' hash, the warm start.
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    task: Mapped[Task] = relationship(back_populates="versions", foreign_keys=[task_id])
    parent: Mapped[AdapterVersion | None] = relationship(remote_side=[id])


class Deployment(Base):
    """What is live on one host for one backbone (``live/<hash>/`` of one home): a row per
    ``(host, backbone)``.

    ``host`` is the home's identity (``Home.host``); several homes sharing one catalog each keep
    their own rows. A row migrated from a single-host catalog has host ``""`` (unclaimed) until
    the first home opens it; a row with no backbone is a home that never switched.
    ``pending_version_id`` with state ``switching`` marks a switch in progress on that backbone;
    since a switch only writes values, finishing it after a crash means running it again.
    """

    __tablename__ = "deployment"
    __table_args__ = (UniqueConstraint("host", "backbone_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    backbone_id: Mapped[int | None] = mapped_column(ForeignKey("backbones.id", ondelete="SET NULL"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"))
    version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="SET NULL")
    )
    pending_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="SET NULL")
    )
    state: Mapped[str] = mapped_column(String(16), default=DEPLOY_IDLE)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    backbone: Mapped[Backbone | None] = relationship()
    task: Mapped[Task | None] = relationship()
    version: Mapped[AdapterVersion | None] = relationship(foreign_keys=[version_id])
    pending_version: Mapped[AdapterVersion | None] = relationship(foreign_keys=[pending_version_id])


class Event(Base):
    """Append-only history. Plain text/ids, no foreign keys, so it outlives what it describes."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    task_name: Mapped[str | None] = mapped_column(String(64), index=True)
    version_id: Mapped[int | None] = mapped_column(Integer)
    # The host whose deployment an event changed (switches); None for catalog-wide events.
    host: Mapped[str | None] = mapped_column(String(255))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Budget(Base):
    """A storage budget: per task (task_id set) or the one global budget (task_id NULL).

    ``scope`` ("global" or "task:<id>") is unique, which makes the global row unique too
    (a plain UNIQUE on a nullable task_id would allow many NULLs).
    """

    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint(
            "(task_id IS NULL AND scope = 'global') OR (task_id IS NOT NULL AND scope <> 'global')",
            name="scope_matches_task",
        ),
        CheckConstraint("max_bytes >= 0", name="max_bytes_nonnegative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(80), unique=True)
    task_id: Mapped[int | None] = mapped_column(
        ForeignKey("tasks.id", ondelete="CASCADE"), unique=True
    )
    max_bytes: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    task: Mapped[Task | None] = relationship()


class Reservation(Base):
    """Bytes a running training has claimed against the budgets before it writes its artifact.

    Budget pre-checks count these, so trainings started together cannot all pass a check that
    only one of them fits. A row is removed when its run records a version or fails; one whose
    process is gone (``host``, ``pid``) is stale and ignored, then removed by the next writer.
    """

    __tablename__ = "reservations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Alias(Base):
    """A named pointer to one of a task's versions (``pets@candidate``).

    ``champion`` is not stored here: a task's champion is its active version
    (``tasks.active_version_id``), which every command already follows.
    """

    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("task_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), index=True
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )

    version: Mapped[AdapterVersion] = relationship()


class VersionTag(Base):
    """A free-form label on a version (``mgr tag pets@3 reviewed``)."""

    __tablename__ = "version_tags"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CatalogIdentity(Base):
    """The catalog's one random id, also recorded in each home that uses it (``catalog-id``):
    ``mgr gc`` deletes nothing in a home that belongs to another catalog."""

    __tablename__ = "catalog_identity"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
