"""Keyword-only CRUD functions over the tuning schema, used by the routers.

Writes reuse ``tuner.store.sql`` (the same upsert statements as the local store), are
de-duplicated within a batch (one statement may not touch a row twice on PostgreSQL) and
chunked to stay under SQLite's bound-parameter limit.
"""
from __future__ import annotations

import hashlib
import json
from datetime import timedelta, timezone
from typing import Any, Iterable, Sequence

from sqlalchemy import BigInteger, and_, case, cast, delete, func, or_, select, tuple_, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from tuner.fingerprint import Fingerprint
from tuner.store.models import ConfigTiming, TuningJob, TuningMiss, TuningRecord, utcnow
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


# Rows are built with ``model_construct``: they were validated on the way in, and
# re-running the input validators on every returned row was most of a lookup's cost.
def _fingerprint_out(row: Any) -> schemas.FingerprintOut:
    return schemas.FingerprintOut.model_construct(
        env_id=row.env_id, vendor=row.vendor, device_name=row.device_name,
        compute_capability=row.compute_capability, sm_count=row.sm_count,
        triton_version=row.triton_version, torch_version=row.torch_version,
    )


def record_out(row: TuningRecord) -> schemas.RecordOut:
    return schemas.RecordOut.model_construct(
        id=row.id, kernel=row.kernel, kernel_hash=row.kernel_hash, key=row.key, env_id=row.env_id,
        fingerprint=_fingerprint_out(row), config=json.loads(row.config),
        median_ms=row.median_ms, p20_ms=row.p20_ms, p80_ms=row.p80_ms, configs_tried=row.configs_tried,
        source=row.source, host=row.host, tool_version=row.tool_version, created_at=_utc(row.created_at),
    )


def miss_out(row: TuningMiss) -> schemas.MissOut:
    return schemas.MissOut.model_construct(
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


def _page(session: Session, model: Any, *, after: int | None, limit: int, **equal: Any) -> tuple[list[Any], int | None]:
    """Rows of ``model`` in id order after ``after``, where each column of ``equal`` that is
    not None matches; returns the page and the next page's ``after`` (None: last page)."""
    q = select(model).order_by(model.id).limit(limit + 1)
    for column, value in equal.items():
        if value is not None:
            q = q.where(getattr(model, column) == value)
    if after is not None:
        q = q.where(model.id > after)
    rows = list(session.scalars(q))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1].id if more and rows else None)


def list_records(
    session: Session, *, kernel: str | None = None, kernel_hash: str | None = None, env_id: str | None = None,
    source: str | None = None, after: int | None = None, limit: int = 100,
) -> tuple[list[TuningRecord], int | None]:
    return _page(session, TuningRecord, after=after, limit=limit, kernel=kernel, kernel_hash=kernel_hash,
                 env_id=env_id, source=source)


def list_misses(
    session: Session, *, kernel: str | None = None, env_id: str | None = None,
    after: int | None = None, limit: int = 100,
) -> tuple[list[TuningMiss], int | None]:
    return _page(session, TuningMiss, after=after, limit=limit, kernel=kernel, env_id=env_id)


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


# -- distributed pretuning jobs ------------------------------------------------------------
def _spec_digest(spec: str) -> str:
    return hashlib.sha256(spec.encode("utf-8")).hexdigest()


def job_out(row: TuningJob) -> schemas.JobOut:
    return schemas.JobOut(
        id=row.id, env_id=row.env_id, spec=json.loads(row.spec), status=row.status, worker=row.worker,
        attempts=row.attempts, heartbeat_at=_utc(row.heartbeat_at), error=row.error,
        created_at=_utc(row.created_at), finished_at=_utc(row.finished_at),
    )


def job_counts(session: Session, *, env_id: str | None) -> schemas.JobCounts:
    q = select(TuningJob.status, func.count()).group_by(TuningJob.status)
    if env_id is not None:
        q = q.where(TuningJob.env_id == env_id)
    return schemas.JobCounts(**{status: n for status, n in session.execute(q)})


def submit_jobs(session: Session, *, engine: Engine, fingerprint: schemas.FingerprintIn,
                jobs: Sequence[schemas.JobSpecIn], requeue: bool = False) -> schemas.JobSubmitResponse:
    """Queue each distinct job once per environment: (env_id, spec_digest) is unique, so a
    workload submitted again, by any number of machines at once, adds nothing."""
    fp = fingerprint.to_fingerprint()
    env = fingerprint_columns(fp)
    specs = {}
    for j in jobs:
        text = j.canonical()
        specs.setdefault(_spec_digest(text), text)
    digests = sorted(specs)  # a fixed order: concurrent submitters lock index entries alike
    now = utcnow()
    submitted = requeued = 0
    table = TuningJob.__table__
    for chunk in _chunks(digests, 100):
        stmt = _insert(engine, table).values([
            {**env, "spec": specs[d], "spec_digest": d, "status": "queued", "worker": None, "attempts": 0,
             "heartbeat_at": None, "error": None, "created_at": now, "finished_at": None}
            for d in chunk
        ]).on_conflict_do_nothing(index_elements=["env_id", "spec_digest"])
        if engine.dialect.insert_returning:  # only the inserted rows come back
            submitted += len(session.execute(stmt.returning(table.c.id)).all())
        else:  # SQLite before 3.35: the changes() count
            submitted += max(session.execute(stmt).rowcount or 0, 0)
        if requeue:
            res = session.execute(
                update(TuningJob)
                .where(TuningJob.env_id == fp.env_id, TuningJob.spec_digest.in_(chunk),
                       TuningJob.status.in_(("done", "failed")))
                .values(status="queued", worker=None, attempts=0, heartbeat_at=None, error=None, finished_at=None)
                .execution_options(synchronize_session=False)
            )
            requeued += res.rowcount or 0
    return schemas.JobSubmitResponse(env_id=fp.env_id, submitted=submitted,
                                     already=len(digests) - submitted, requeued=requeued)


def claim_jobs(session: Session, *, engine: Engine, env_id: str, worker: str, limit: int,
               lease_s: float, max_attempts: int) -> list[TuningJob]:
    """Move up to ``limit`` claimable jobs of ``env_id`` to running for ``worker``.

    Claimable: queued, or running with a heartbeat older than the lease (its worker died);
    such a job that was already claimed ``max_attempts`` times is failed instead. On
    PostgreSQL the candidates are locked with ``FOR UPDATE SKIP LOCKED``, so concurrent
    claims never get the same job and never wait on each other; on SQLite the caller's
    transaction runs under the writer lock, which serializes claims (SQLite ignores FOR UPDATE).
    """
    now = utcnow()
    stale = now - timedelta(seconds=lease_s)
    claimable = or_(
        TuningJob.status == "queued",
        and_(TuningJob.status == "running", TuningJob.heartbeat_at < stale),
    )
    claimed: list[TuningJob] = []
    while len(claimed) < limit:
        q = (
            select(TuningJob)
            .where(TuningJob.env_id == env_id, claimable)
            .order_by(TuningJob.id)
            .limit(limit - len(claimed))
            .with_for_update(skip_locked=True)
        )
        rows = list(session.scalars(q))
        if not rows:
            break
        for row in rows:
            if row.status == "running" and row.attempts >= max_attempts:
                row.status, row.finished_at = "failed", now
                row.error = (f"abandoned: no heartbeat from worker {row.worker!r} for {lease_s:g} s, "
                             f"{row.attempts} of {max_attempts} attempts used")[:schemas.MAX_TEXT_CHARS]
                continue
            row.status, row.worker, row.heartbeat_at = "running", worker, now
            row.attempts += 1
            claimed.append(row)
        session.flush()  # the failed ones no longer match the next round's query
    return claimed


class JobConflict(Exception):
    """The job is not running for this worker (finished, or its lease went to another)."""


def _owned_job(session: Session, job_id: int, worker: str) -> TuningJob | None:
    """The job, row-locked; ``JobConflict`` when it is not running for ``worker``."""
    row = session.scalars(select(TuningJob).where(TuningJob.id == job_id).with_for_update()).first()
    if row is None:
        return None
    if row.status != "running" or row.worker != worker:
        owner = f"running for {row.worker!r}" if row.status == "running" else row.status
        raise JobConflict(f"job {job_id} is not running for worker {worker!r} (it is {owner})")
    return row


def heartbeat_job(session: Session, *, job_id: int, worker: str) -> TuningJob | None:
    row = _owned_job(session, job_id, worker)
    if row is not None:
        row.heartbeat_at = utcnow()
    return row


def finish_job(session: Session, *, job_id: int, worker: str, ok: bool, error: str | None) -> TuningJob | None:
    """Done or failed, exactly once: only the worker holding the job can finish it."""
    row = _owned_job(session, job_id, worker)
    if row is not None:
        now = utcnow()
        row.status, row.finished_at, row.heartbeat_at = ("done" if ok else "failed"), now, now
        row.error = None if ok else (error or "failed")
    return row


def list_jobs(session: Session, *, env_id: str | None = None, status: str | None = None,
              after: int | None = None, limit: int = 100) -> tuple[list[TuningJob], int | None]:
    return _page(session, TuningJob, after=after, limit=limit, env_id=env_id, status=status)


# -- bundles -------------------------------------------------------------------------------
_NO_ENV = Fingerprint("", "", "", 0, "", "")  # the server has no "this machine's environment"


def export_bundle(engine: Engine, *, kernel: str | None = None, env_id: str | None = None,
                  device: str | None = None) -> tuple[bytes, int]:
    """A bundle (``tuner.bundle`` format) of the matching records, their timings and the
    misses; returns its bytes and its record count."""
    from tuner.bundle import bundle_bytes, ident_key, load_store
    from tuner.store.sql import SQLStore

    data = load_store(SQLStore(engine=engine), device=device, kernel=kernel)
    if env_id is not None:
        data.records = [r for r in data.records if r.identity.env_id == env_id]
        keep = {ident_key(r.identity) for r in data.records}
        data.timings = {k: v for k, v in data.timings.items() if k in keep}
        data.misses = [m for m in data.misses if m.identity.env_id == env_id]
    filters = {"kernel": kernel, "env_id": env_id, "device": device, "exported_by": "tunerd"}
    return bundle_bytes(data, filters=filters), len(data.records)


def import_bundle(engine: Engine, data: Any, *, policy: str) -> schemas.ImportResponse:
    """Write a validated bundle in one transaction under the writer lock (the same code as
    ``gems-tunedb import``): records by ``policy`` with their timings, misses merged."""
    from tuner.bundle import ident_key, import_into_store
    from tuner.store.sql import SQLStore

    # Identity order, like upsert_records: concurrent PostgreSQL writers lock rows alike.
    data.records.sort(key=lambda r: ident_key(r.identity))
    data.misses.sort(key=lambda m: ident_key(m.identity))
    report = import_into_store(SQLStore(engine=engine), data, policy=policy, here=_NO_ENV)
    return schemas.ImportResponse(
        policy=policy, records=report.records, records_written=report.records_written,
        timings_written=report.timings_written, misses_written=report.misses_written,
        verdicts=dict(report.verdicts), kernel_files_ignored=len(data.kernel_files),
    )
