"""distributed pretuning: the tuning_jobs queue

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tuning_jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("spec_digest", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("worker", sa.String(256), nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("env_id", sa.String(64), nullable=False),
        sa.Column("vendor", sa.String(64), nullable=False),
        sa.Column("device_name", sa.String(256), nullable=False),
        sa.Column("compute_capability", sa.String(32), nullable=False),
        sa.Column("sm_count", sa.Integer, nullable=False),
        sa.Column("triton_version", sa.String(64), nullable=False),
        sa.Column("torch_version", sa.String(64), nullable=False),
        sa.UniqueConstraint("env_id", "spec_digest", name="uq_job_spec"),
        sa.CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="ck_job_status"),
    )
    op.create_index("ix_job_claim", "tuning_jobs", ["env_id", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_job_claim", table_name="tuning_jobs")
    op.drop_table("tuning_jobs")
