"""models, versions, aliases and the promotion audit log

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, unique=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_version", sa.Integer(), nullable=False),
    )
    op.create_table(
        "model_version",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("model.id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(20), nullable=False),
        sa.Column("checkpoint_artifact_id", sa.Integer(), sa.ForeignKey("artifact.id"), nullable=False),
        sa.Column("evaluation_artifact_id", sa.Integer(), sa.ForeignKey("artifact.id"), nullable=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("run.id"), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("model_id", "version", name="uq_model_version"),
    )
    op.create_index("ix_model_version_stage", "model_version", ["model_id", "stage"])
    op.create_table(
        "model_version_tokenizer",
        sa.Column(
            "model_version_id",
            sa.Integer(),
            sa.ForeignKey("model_version.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("artifact_id", sa.Integer(), sa.ForeignKey("artifact.id"), primary_key=True),
    )
    op.create_table(
        "model_alias",
        sa.Column("model_id", sa.Integer(), sa.ForeignKey("model.id"), primary_key=True),
        sa.Column("alias", sa.String(100), primary_key=True),
        sa.Column("model_version_id", sa.Integer(), sa.ForeignKey("model_version.id"), nullable=False),
    )
    op.create_table(
        "promotion_event",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_version_id", sa.Integer(), sa.ForeignKey("model_version.id"), nullable=False),
        sa.Column("from_stage", sa.String(20), nullable=False),
        sa.Column("to_stage", sa.String(20), nullable=False),
        sa.Column("replaced_version_id", sa.Integer(), sa.ForeignKey("model_version.id"), nullable=True),
        sa.Column("actor", sa.String(255), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("gate_results", sa.JSON(), nullable=False),
    )
    op.create_index("ix_promotion_event_model_version_id", "promotion_event", ["model_version_id"])


def downgrade() -> None:
    op.drop_table("promotion_event")
    op.drop_table("model_alias")
    op.drop_table("model_version_tokenizer")
    op.drop_table("model_version")
    op.drop_table("model")
