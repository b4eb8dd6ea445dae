"""initial schema: tuning records, per-config timings, recorded misses

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _fingerprint_columns() -> list[sa.Column]:
    return [
        sa.Column("env_id", sa.String(64), nullable=False),
        sa.Column("vendor", sa.String(64), nullable=False),
        sa.Column("device_name", sa.String(256), nullable=False),
        sa.Column("compute_capability", sa.String(32), nullable=False),
        sa.Column("sm_count", sa.Integer, nullable=False),
        sa.Column("triton_version", sa.String(64), nullable=False),
        sa.Column("torch_version", sa.String(64), nullable=False),
    ]


def _identity_columns() -> list[sa.Column]:
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("kernel", sa.String(256), nullable=False),
        sa.Column("kernel_hash", sa.String(64), nullable=False),
        sa.Column("key", sa.Text, nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "tuning_records",
        *_identity_columns(),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("median_ms", sa.Float, nullable=False),
        sa.Column("p20_ms", sa.Float, nullable=False),
        sa.Column("p80_ms", sa.Float, nullable=False),
        sa.Column("configs_tried", sa.Integer, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("host", sa.String(256), nullable=False),
        sa.Column("tool_version", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_fingerprint_columns(),
        sa.UniqueConstraint("kernel", "kernel_hash", "key", "env_id", name="uq_record_identity"),
    )
    op.create_index("ix_record_lookup", "tuning_records", ["kernel", "kernel_hash", "env_id"])
    op.create_table(
        "config_timings",
        *_identity_columns(),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("median_ms", sa.Float, nullable=True),
        sa.Column("p20_ms", sa.Float, nullable=True),
        sa.Column("p80_ms", sa.Float, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_fingerprint_columns(),
        sa.UniqueConstraint("kernel", "kernel_hash", "key", "env_id", "config", name="uq_timing_identity"),
    )
    op.create_table(
        "tuning_misses",
        *_identity_columns(),
        sa.Column("raw_args", sa.Text, nullable=True),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        *_fingerprint_columns(),
        sa.UniqueConstraint("kernel", "kernel_hash", "key", "env_id", name="uq_miss_identity"),
    )


def downgrade() -> None:
    op.drop_table("tuning_misses")
    op.drop_table("config_timings")
    op.drop_index("ix_record_lookup", table_name="tuning_records")
    op.drop_table("tuning_records")
