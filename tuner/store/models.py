"""The tuning database schema (SQLAlchemy 2.0). Created and upgraded only by Alembic
(``db_migrations/``): no code path calls ``create_all``.

One row per (kernel, kernel_hash, key, env_id) in ``tuning_records``; every config's
timing in ``config_timings``; keys that ran untuned under ``FLAGGEMS_AUTOTUNE=never`` in
``tuning_misses``; distributed pretuning jobs (one op call per row, per environment) in
``tuning_jobs``. ``env_id`` is the digest of the fingerprint columns stored beside it.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import CheckConstraint, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class FingerprintColumns:
    env_id: Mapped[str] = mapped_column(String(64))
    vendor: Mapped[str] = mapped_column(String(64))
    device_name: Mapped[str] = mapped_column(String(256))
    compute_capability: Mapped[str] = mapped_column(String(32))
    sm_count: Mapped[int] = mapped_column(Integer)
    triton_version: Mapped[str] = mapped_column(String(64))
    torch_version: Mapped[str] = mapped_column(String(64))


class TuningRecord(FingerprintColumns, Base):
    __tablename__ = "tuning_records"
    __table_args__ = (
        UniqueConstraint("kernel", "kernel_hash", "key", "env_id", name="uq_record_identity"),
        Index("ix_record_lookup", "kernel", "kernel_hash", "env_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kernel: Mapped[str] = mapped_column(String(256))
    kernel_hash: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(Text)  # canonical JSON list of bucketed values
    config: Mapped[str] = mapped_column(Text)  # canonical JSON of block sizes and launch options
    median_ms: Mapped[float] = mapped_column(Float)
    p20_ms: Mapped[float] = mapped_column(Float)
    p80_ms: Mapped[float] = mapped_column(Float)
    configs_tried: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(32))  # pretune | online | import
    host: Mapped[str] = mapped_column(String(256))
    tool_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ConfigTiming(FingerprintColumns, Base):
    __tablename__ = "config_timings"
    __table_args__ = (
        UniqueConstraint("kernel", "kernel_hash", "key", "env_id", "config", name="uq_timing_identity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kernel: Mapped[str] = mapped_column(String(256))
    kernel_hash: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(Text)
    config: Mapped[str] = mapped_column(Text)
    median_ms: Mapped[float | None] = mapped_column(Float, nullable=True)  # None: failed
    p20_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    p80_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TuningMiss(FingerprintColumns, Base):
    __tablename__ = "tuning_misses"
    __table_args__ = (
        UniqueConstraint("kernel", "kernel_hash", "key", "env_id", name="uq_miss_identity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kernel: Mapped[str] = mapped_column(String(256))
    kernel_hash: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(Text)
    raw_args: Mapped[str | None] = mapped_column(Text, nullable=True)  # unbucketed key values
    count: Mapped[int] = mapped_column(Integer, default=1)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TuningJob(FingerprintColumns, Base):
    """One pretune job (an op call) of one environment, claimed by one worker at a time.

    ``spec`` is the canonical JSON of ``tuner.workload.Job.as_dict()``; the unique
    (env_id, spec_digest) makes submitting a workload again (from any machine) a no-op.
    A ``running`` job whose ``heartbeat_at`` is older than the lease goes back to workers.
    """

    __tablename__ = "tuning_jobs"
    __table_args__ = (
        UniqueConstraint("env_id", "spec_digest", name="uq_job_spec"),
        Index("ix_job_claim", "env_id", "status", "id"),
        CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="ck_job_status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[str] = mapped_column(Text)
    spec_digest: Mapped[str] = mapped_column(String(64))  # sha256 hex of spec: short enough for any btree
    status: Mapped[str] = mapped_column(String(16), default="queued")
    worker: Mapped[str | None] = mapped_column(String(256), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
