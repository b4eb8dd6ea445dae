"""The tuning store on an SQL database: a local SQLite file (WAL, file-locked writes) or
PostgreSQL. Upserts are single statements, so a writer killed mid-way leaves either the
old row or the new one."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tuner.fingerprint import Fingerprint
from tuner.store import db as dbmod
from tuner.store.base import Identity, Miss, Record, Timing, canonical_json
from tuner.store.models import ConfigTiming, TuningMiss, TuningRecord, utcnow

POLICIES = ("replace", "faster", "keep", "newer")


def fingerprint_columns(fp: Fingerprint) -> dict[str, Any]:
    return {"env_id": fp.env_id, **fp.as_dict()}


def row_fingerprint(row: Any) -> Fingerprint:
    return Fingerprint(
        vendor=row.vendor,
        device_name=row.device_name,
        compute_capability=row.compute_capability,
        sm_count=row.sm_count,
        triton_version=row.triton_version,
        torch_version=row.torch_version,
    )


def row_to_record(row: TuningRecord) -> Record:
    ident = Identity(row.kernel, row.kernel_hash, row.key, row_fingerprint(row))
    return Record(
        identity=ident,
        config=json.loads(row.config),
        median_ms=row.median_ms,
        p20_ms=row.p20_ms,
        p80_ms=row.p80_ms,
        configs_tried=row.configs_tried,
        source=row.source,
        host=row.host,
        tool_version=row.tool_version,
        created_at=row.created_at,
    )


def record_values(rec: Record) -> dict[str, Any]:
    i = rec.identity
    return {
        "kernel": i.kernel,
        "kernel_hash": i.kernel_hash,
        "key": i.key,
        **fingerprint_columns(i.fingerprint),
        "config": canonical_json(rec.config),
        "median_ms": rec.median_ms,
        "p20_ms": rec.p20_ms,
        "p80_ms": rec.p80_ms,
        "configs_tried": rec.configs_tried,
        "source": rec.source,
        "host": rec.host,
        "tool_version": rec.tool_version,
        "created_at": rec.created_at or utcnow(),
    }


def _insert(engine: Engine, table):
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)


_RECORD_IDENTITY = ["kernel", "kernel_hash", "key", "env_id"]
_RECORD_PAYLOAD = ["config", "median_ms", "p20_ms", "p80_ms", "configs_tried", "source", "host", "tool_version", "created_at"]


def upsert_records(session: Session, engine: Engine, values: Sequence[dict[str, Any]], policy: str = "replace") -> None:
    """Insert records; on an identity conflict apply ``policy``.

    replace: the new row wins; faster: the lower median wins; newer: the later
    created_at wins; keep: the stored row stays.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown merge policy {policy!r}; use one of {POLICIES}")
    if not values:
        return
    stmt = _insert(engine, TuningRecord.__table__).values(list(values))
    if policy == "keep":
        stmt = stmt.on_conflict_do_nothing(index_elements=_RECORD_IDENTITY)
    else:
        where = None
        if policy == "faster":
            where = stmt.excluded.median_ms < TuningRecord.__table__.c.median_ms
        elif policy == "newer":
            where = stmt.excluded.created_at > TuningRecord.__table__.c.created_at
        stmt = stmt.on_conflict_do_update(
            index_elements=_RECORD_IDENTITY,
            set_={c: stmt.excluded[c] for c in _RECORD_PAYLOAD},
            where=where,
        )
    session.execute(stmt)


def timing_values(ident: Identity, t: Timing) -> dict[str, Any]:
    return {
        "kernel": ident.kernel,
        "kernel_hash": ident.kernel_hash,
        "key": ident.key,
        **fingerprint_columns(ident.fingerprint),
        "config": canonical_json(t.config),
        "median_ms": t.median_ms,
        "p20_ms": t.p20_ms,
        "p80_ms": t.p80_ms,
        "error": t.error,
        "created_at": utcnow(),
    }


def upsert_timings(session: Session, engine: Engine, values: Sequence[dict[str, Any]]) -> None:
    if not values:
        return
    stmt = _insert(engine, ConfigTiming.__table__).values(list(values))
    stmt = stmt.on_conflict_do_update(
        index_elements=["kernel", "kernel_hash", "key", "env_id", "config"],
        set_={c: stmt.excluded[c] for c in ("median_ms", "p20_ms", "p80_ms", "error", "created_at")},
    )
    session.execute(stmt)


class SQLStore:
    """A ``TuningStore`` over one SQL database, schema at Alembic head."""

    def __init__(self, db: str | Path | None = None, *, engine: Engine | None = None) -> None:
        self.url = dbmod.resolve_url(db) if engine is None else engine.url.render_as_string(hide_password=False)
        self.engine = engine if engine is not None else dbmod.open_engine(self.url)
        self.name = dbmod.describe(self.url)

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def write(self):
        """Context: a transaction under the writer lock."""
        return _WriteTxn(self)

    # -- reads -------------------------------------------------------------------------
    def lookup(self, ident: Identity) -> Record | None:
        q = select(TuningRecord).where(
            TuningRecord.kernel == ident.kernel,
            TuningRecord.kernel_hash == ident.kernel_hash,
            TuningRecord.key == ident.key,
            TuningRecord.env_id == ident.env_id,
        )
        with self.session() as s:
            row = s.scalars(q).first()
            return row_to_record(row) if row is not None else None

    def candidates(self, kernel: str, kernel_hash: str, fingerprint: Fingerprint) -> list[Record]:
        q = select(TuningRecord).where(
            TuningRecord.kernel == kernel,
            TuningRecord.kernel_hash == kernel_hash,
            TuningRecord.env_id == fingerprint.env_id,
        )
        with self.session() as s:
            return [row_to_record(r) for r in s.scalars(q)]

    def records(self, *, kernel: str | None = None, env_id: str | None = None) -> list[Record]:
        q = select(TuningRecord).order_by(TuningRecord.id)
        if kernel is not None:
            q = q.where(TuningRecord.kernel == kernel)
        if env_id is not None:
            q = q.where(TuningRecord.env_id == env_id)
        with self.session() as s:
            return [row_to_record(r) for r in s.scalars(q)]

    def timings(self, ident: Identity) -> list[Timing]:
        q = select(ConfigTiming).where(
            ConfigTiming.kernel == ident.kernel,
            ConfigTiming.kernel_hash == ident.kernel_hash,
            ConfigTiming.key == ident.key,
            ConfigTiming.env_id == ident.env_id,
        )
        with self.session() as s:
            return [Timing(json.loads(r.config), r.median_ms, r.p20_ms, r.p80_ms, r.error) for r in s.scalars(q)]

    def misses(self, *, fingerprint: Fingerprint | None = None) -> list[Miss]:
        q = select(TuningMiss).order_by(TuningMiss.id)
        if fingerprint is not None:
            q = q.where(TuningMiss.env_id == fingerprint.env_id)
        with self.session() as s:
            return [
                Miss(Identity(r.kernel, r.kernel_hash, r.key, row_fingerprint(r)), r.raw_args, r.count)
                for r in s.scalars(q)
            ]

    def counts(self) -> dict[str, int]:
        with self.session() as s:
            return {
                "records": s.scalar(select(func.count()).select_from(TuningRecord)),
                "timings": s.scalar(select(func.count()).select_from(ConfigTiming)),
                "misses": s.scalar(select(func.count()).select_from(TuningMiss)),
            }

    # -- writes ------------------------------------------------------------------------
    def save(self, record: Record, timings: Sequence[Timing] = (), *, policy: str = "replace") -> None:
        with self.write() as s:
            upsert_timings(s, self.engine, [timing_values(record.identity, t) for t in timings])
            upsert_records(s, self.engine, [record_values(record)], policy)
            self._clear_miss(s, record.identity)

    def _clear_miss(self, s: Session, ident: Identity) -> None:
        s.execute(
            delete(TuningMiss).where(
                TuningMiss.kernel == ident.kernel,
                TuningMiss.kernel_hash == ident.kernel_hash,
                TuningMiss.key == ident.key,
                TuningMiss.env_id == ident.env_id,
            )
        )

    def record_miss(self, miss: Miss) -> None:
        i = miss.identity
        now = utcnow()
        values = {
            "kernel": i.kernel, "kernel_hash": i.kernel_hash, "key": i.key,
            **fingerprint_columns(i.fingerprint),
            "raw_args": miss.raw_args, "count": miss.count, "first_seen": now, "last_seen": now,
        }
        with self.write() as s:
            stmt = _insert(self.engine, TuningMiss.__table__).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=_RECORD_IDENTITY,
                set_={"count": TuningMiss.__table__.c["count"] + stmt.excluded["count"], "last_seen": stmt.excluded.last_seen},
            )
            s.execute(stmt)

    def close(self) -> None:
        self.engine.dispose()


class _WriteTxn:
    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self.lock = dbmod.writer_lock(store.url)

    def __enter__(self) -> Session:
        self.lock.__enter__()
        self.session = self.store.session()
        self.session.begin()
        return self.session

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.session.commit()
            else:
                self.session.rollback()
        finally:
            self.session.close()
            self.lock.__exit__(exc_type, exc, tb)
