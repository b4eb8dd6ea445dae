"""Keyword-only CRUD functions over the tuning schema, used by the routers.

Writes reuse ``tuner.store.sql`` (the same upsert statements as the local store), are
de-duplicated within a batch (one statement may not touch a row twice on PostgreSQL) and
chunked to stay under SQLite's bound-parameter limit.
"""
from __future__ import annotations

import json
from datetime import timezone
from typing import Any, Iterable, Sequence

from sqlalchemy import BigInteger, case, cast, delete, func, select, tuple_
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tuner.store.models import ConfigTiming, TuningMiss, TuningRecord, utcnow
from tuner.store.sql import _insert, fingerprint_columns, upsert_records as _upsert_records, upsert_timings
from tuner.store.base import canonical_json
from tunerd import schemas

CHUNK = 200  # rows per statement: 200 x ~20 columns stays far below SQLite's 32766 parameters

IdentityKey = tuple[str, str, str, str]  # kernel, kernel_hash, key, env_id


def _chunks(items: Sequence[Any], n: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _utc(dt):
    """SQLite drops the zone of a stored datetime; every stored time is UTC."""
    return dt.replace(tzinfo=timezone.utc) if dt is not None and dt.tzinfo is None else dt


def _fingerprint_out(row: Any) -> schemas.FingerprintOut:
    return schemas.FingerprintOut(
        env_id=row.env_id, vendor=row.vendor, device_name=row.device_name,
        compute_capability=row.compute_capability, sm_count=row.sm_count,
        triton_version=row.triton_version, torch_version=row.torch_version,
    )


def record_out(row: TuningRecord) -> schemas.RecordOut:
    return schemas.RecordOut(
        id=row.id, kernel=row.kernel, kernel_hash=row.kernel_hash, key=row.key, env_id=row.env_id,
        fingerprint=_fingerprint_out(row), config=json.loads(row.config),
        median_ms=row.median_ms, p20_ms=row.p20_ms, p80_ms=row.p80_ms, configs_tried=row.configs_tried,
        source=row.source, host=row.host, tool_version=row.tool_version, created_at=_utc(row.created_at),
    )


def miss_out(row: TuningMiss) -> schemas.MissOut:
    return schemas.MissOut(
        id=row.id, kernel=row.kernel, kernel_hash=row.kernel_hash, key=row.key, env_id=row.env_id,
        fingerprint=_fingerprint_out(row), raw_args=row.raw_args, count=row.count,
        first_seen=_utc(row.first_seen), last_seen=_utc(row.last_seen),
    )


# -- reads ---------------------------------------------------------------------------------
def lookup_records(session: Session, *, kernel: str, kernel_hash: str, env_id: str, keys: Sequence[str]) -> list[TuningRecord]:
    wanted = list(dict.fromkeys(keys))
    rows: list[TuningRecord] = []
    for chunk in _chunks(wanted, 500):
        q = select(TuningRecord).where(
            TuningRecord.kernel == kernel,
            TuningRecord.kernel_hash == kernel_hash,
            TuningRecord.env_id == env_id,
            TuningRecord.key.in_(chunk),
        )
        rows.extend(session.scalars(q))
    return rows


def list_records(
    session: Session, *, kernel: str | None = None, kernel_hash: str | None = None, env_id: str | None = None,
    source: str | None = None, after: int | None = None, limit: int = 100,
) -> tuple[list[TuningRecord], int | None]:
    q = select(TuningRecord).order_by(TuningRecord.id).limit(limit + 1)
    if kernel is not None:
        q = q.where(TuningRecord.kernel == kernel)
    if kernel_hash is not None:
        q = q.where(TuningRecord.kernel_hash == kernel_hash)
    if env_id is not None:
        q = q.where(TuningRecord.env_id == env_id)
    if source is not None:
        q = q.where(TuningRecord.source == source)
    if after is not None:
        q = q.where(TuningRecord.id > after)
    rows = list(session.scalars(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def list_misses(
    session: Session, *, kernel: str | None = None, env_id: str | None = None,
    after: int | None = None, limit: int = 100,
) -> tuple[list[TuningMiss], int | None]:
    q = select(TuningMiss).order_by(TuningMiss.id).limit(limit + 1)
    if kernel is not None:
        q = q.where(TuningMiss.kernel == kernel)
    if env_id is not None:
        q = q.where(TuningMiss.env_id == env_id)
    if after is not None:
        q = q.where(TuningMiss.id > after)
    rows = list(session.scalars(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def count_rows(session: Session) -> dict[str, int]:
    return {
        "records": session.scalar(select(func.count()).select_from(TuningRecord)) or 0,
        "timings": session.scalar(select(func.count()).select_from(ConfigTiming)) or 0,
        "misses": session.scalar(select(func.count()).select_from(TuningMiss)) or 0,
    }


def stats(session: Session) -> dict[str, int]:
    out = count_rows(session)
    out["kernels"] = session.scalar(select(func.count(func.distinct(TuningRecord.kernel)))) or 0
    out["environments"] = session.scalar(select(func.count(func.distinct(TuningRecord.env_id)))) or 0
    return out


# -- writes --------------------------------------------------------------------------------
def _record_row(r: schemas.RecordIn) -> dict[str, Any]:
    fp = r.fingerprint.to_fingerprint()
    return {
        "kernel": r.kernel, "kernel_hash": r.kernel_hash, "key": r.key, **fingerprint_columns(fp),
        "config": canonical_json(r.config), "median_ms": r.median_ms, "p20_ms": r.p20_ms, "p80_ms": r.p80_ms,
        "configs_tried": r.configs_tried, "source": r.source, "host": r.host, "tool_version": r.tool_version,
        "created_at": r.created_at or utcnow(),
    }


def _identity(row: dict[str, Any]) -> IdentityKey:
    return (row["kernel"], row["kernel_hash"], row["key"], row["env_id"])


def upsert_records(session: Session, *, engine: Engine, records: Sequence[schemas.RecordIn]) -> int:
    """Store tuning results: per identity the lowest median wins, in the batch and against
    the stored row (policy ``faster``); idempotent. Every config timing is kept, and a
    stored miss of the identity is cleared. Returns the number of distinct identities."""
    best: dict[IdentityKey, dict[str, Any]] = {}
    timings: dict[tuple, dict[str, Any]] = {}
    for r in records:
        row = _record_row(r)
        ident = _identity(row)
        if ident not in best or row["median_ms"] < best[ident]["median_ms"]:
            best[ident] = row
        for t in r.timings:
            cfg = canonical_json(t.config)
            timings[ident + (cfg,)] = {
                "kernel": row["kernel"], "kernel_hash": row["kernel_hash"], "key": row["key"],
                **{c: row[c] for c in ("env_id", "vendor", "device_name", "compute_capability", "sm_count",
                                       "triton_version", "torch_version")},
                "config": cfg, "median_ms": t.median_ms, "p20_ms": t.p20_ms, "p80_ms": t.p80_ms,
                "error": t.error, "created_at": utcnow(),
            }
    # A fixed order so concurrent writers lock rows in the same order (no deadlocks on PG).
    rows = [best[k] for k in sorted(best)]
    for chunk in _chunks(list(timings[k] for k in sorted(timings)), 100):
        upsert_timings(session, engine, chunk)
    for chunk in _chunks(rows, 100):
        _upsert_records(session, engine, chunk, "faster")
    for chunk in _chunks(sorted(best), 100):
        session.execute(
            delete(TuningMiss).where(
                tuple_(TuningMiss.kernel, TuningMiss.kernel_hash, TuningMiss.key, TuningMiss.env_id).in_(chunk)
            )
        )
    return len(best)


def record_misses(session: Session, *, engine: Engine, misses: Sequence[schemas.MissIn]) -> int:
    """Count keys that ran untuned; the count saturates at the column's maximum."""
    merged: dict[IdentityKey, dict[str, Any]] = {}
    now = utcnow()
    for m in misses:
        fp = m.fingerprint.to_fingerprint()
        ident = (m.kernel, m.kernel_hash, m.key, fp.env_id)
        if ident in merged:
            merged[ident]["count"] = min(merged[ident]["count"] + m.count, schemas.INT32_MAX)
            if m.raw_args is not None:
                merged[ident]["raw_args"] = m.raw_args
            continue
        merged[ident] = {
            "kernel": m.kernel, "kernel_hash": m.kernel_hash, "key": m.key, **fingerprint_columns(fp),
            "raw_args": m.raw_args, "count": m.count, "first_seen": now, "last_seen": now,
        }
    table = TuningMiss.__table__
    for chunk in _chunks([merged[k] for k in sorted(merged)], 100):
        stmt = _insert(engine, table).values(list(chunk))
        total = cast(table.c["count"], BigInteger) + stmt.excluded["count"]
        stmt = stmt.on_conflict_do_update(
            index_elements=["kernel", "kernel_hash", "key", "env_id"],
            set_={
                "count": case((total > schemas.INT32_MAX, schemas.INT32_MAX), else_=total),
                "last_seen": stmt.excluded.last_seen,
            },
        )
        session.execute(stmt)
    return len(misses)
