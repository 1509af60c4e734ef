"""Registry schema: SQLAlchemy 2 typed ORM. Alembic migrations in ``migrations/`` mirror it.

Artifacts and runs form a bipartite lineage graph (run consumed / produced
artifact); models have monotonically numbered versions with a stage, aliases and
an audit log of promotions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

STAGES = ("none", "staging", "production", "archived")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, dt.datetime: DateTime(timezone=True)}


class Run(Base):
    __tablename__ = "run"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(100), index=True)
    status: Mapped[str] = mapped_column(String(20))  # running | succeeded | failed
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None]
    git_commit: Mapped[str | None] = mapped_column(String(64))
    git_dirty: Mapped[bool | None] = mapped_column(Boolean)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    params_sha256: Mapped[str | None] = mapped_column(String(64))
    dvc_lock_sha256: Mapped[str | None] = mapped_column(String(64))
    prefect_flow_run_id: Mapped[str | None] = mapped_column(String(64), index=True)
    host: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)


class Artifact(Base):
    __tablename__ = "artifact"
    __table_args__ = (UniqueConstraint("kind", "name", "sha256", name="uq_artifact_kind_name_sha"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(50), index=True)
    name: Mapped[str] = mapped_column(String(255))
    uri: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    created_by_run_id: Mapped[int | None] = mapped_column(ForeignKey("run.id"))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)


class RunInput(Base):
    __tablename__ = "run_input"

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifact.id"), primary_key=True, index=True)


class RunOutput(Base):
    __tablename__ = "run_output"

    run_id: Mapped[int] = mapped_column(ForeignKey("run.id", ondelete="CASCADE"), primary_key=True)
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifact.id"), primary_key=True, index=True)


class Model(Base):
    __tablename__ = "model"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_version: Mapped[int] = mapped_column(Integer, default=0)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", order_by="ModelVersion.version"
    )


class ModelVersion(Base):
    __tablename__ = "model_version"
    __table_args__ = (
        UniqueConstraint("model_id", "version", name="uq_model_version"),
        Index("ix_model_version_stage", "model_id", "stage"),
        # The database itself guarantees at most one production version per model.
        Index(
            "uq_model_version_one_production",
            "model_id",
            unique=True,
            sqlite_where=text("stage = 'production'"),
            postgresql_where=text("stage = 'production'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"))
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(20), default="none")
    checkpoint_artifact_id: Mapped[int] = mapped_column(ForeignKey("artifact.id"))
    evaluation_artifact_id: Mapped[int | None] = mapped_column(ForeignKey("artifact.id"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("run.id"))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    model: Mapped[Model] = relationship(back_populates="versions")


class ModelVersionTokenizer(Base):
    __tablename__ = "model_version_tokenizer"

    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_version.id", ondelete="CASCADE"), primary_key=True
    )
    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifact.id"), primary_key=True)


class ModelAlias(Base):
    __tablename__ = "model_alias"

    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(100), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"))


class PromotionEvent(Base):
    __tablename__ = "promotion_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_version.id"), index=True)
    from_stage: Mapped[str] = mapped_column(String(20))
    to_stage: Mapped[str] = mapped_column(String(20))
    replaced_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_version.id"))
    actor: Mapped[str] = mapped_column(String(255))
    at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    reason: Mapped[str | None] = mapped_column(Text)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    gate_results: Mapped[dict[str, Any]] = mapped_column(default=dict)
