"""runs, artifacts and lineage edges

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("stage", sa.String(100), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("git_dirty", sa.Boolean(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("params_sha256", sa.String(64), nullable=True),
        sa.Column("dvc_lock_sha256", sa.String(64), nullable=True),
        sa.Column("prefect_flow_run_id", sa.String(64), nullable=True),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_run_stage", "run", ["stage"])
    op.create_index("ix_run_prefect_flow_run_id", "run", ["prefect_flow_run_id"])
    op.create_table(
        "artifact",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(50), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by_run_id", sa.Integer(), sa.ForeignKey("run.id"), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.UniqueConstraint("kind", "name", "sha256", name="uq_artifact_kind_name_sha"),
    )
    op.create_index("ix_artifact_kind", "artifact", ["kind"])
    op.create_index("ix_artifact_sha256", "artifact", ["sha256"])
    for table in ("run_input", "run_output"):
        op.create_table(
            table,
            sa.Column("run_id", sa.Integer(), sa.ForeignKey("run.id", ondelete="CASCADE"), primary_key=True),
            sa.Column("artifact_id", sa.Integer(), sa.ForeignKey("artifact.id"), primary_key=True),
        )
        op.create_index(f"ix_{table}_artifact_id", table, ["artifact_id"])


def downgrade() -> None:
    op.drop_table("run_output")
    op.drop_table("run_input")
    op.drop_table("artifact")
    op.drop_table("run")
