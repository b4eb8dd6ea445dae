"""Tuning records: batch lookup, batch upsert, list with filters and pagination."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, HTTPException, Query, status

from tunerd import crud, schemas
from tunerd.schemas import NO_CONTROL
from tunerd.deps import DatabaseDep, MetricsDep, ReadAuth, ReadSession, SettingsDep, WriteAuth, WriteSession

router = APIRouter(prefix="/records", tags=["records"])


def _check_batch(n: int, settings: SettingsDep) -> None:
    if n > settings.max_batch:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"at most {settings.max_batch} items per request")


@router.post("/lookup", response_model=schemas.LookupResponse, dependencies=[ReadAuth])
def lookup(body: schemas.LookupRequest, session: ReadSession, settings: SettingsDep, metrics: MetricsDep):
    """The records of many keys of one kernel version on one environment."""
    _check_batch(len(body.keys), settings)
    env_id = body.fingerprint.to_fingerprint().env_id
    rows = crud.lookup_records(session, kernel=body.kernel, kernel_hash=body.kernel_hash, env_id=env_id, keys=body.keys)
    found = {r.key for r in rows}
    missing = [k for k in dict.fromkeys(body.keys) if k not in found]
    metrics.lookups(len(found), len(missing))
    return schemas.LookupResponse(records=[crud.record_out(r) for r in rows], missing=missing)


@router.post("", response_model=schemas.UpsertResponse, dependencies=[WriteAuth])
def upsert(body: schemas.UpsertRequest, session: WriteSession, db: DatabaseDep, settings: SettingsDep, metrics: MetricsDep):
    """Store tuning results. For one (kernel, kernel_hash, key, environment) the result
    with the lower median (and its provenance) is kept; sending a batch again changes nothing."""
    _check_batch(len(body.records), settings)
    n = crud.upsert_records(session, engine=db.engine, records=body.records)
    metrics.add("records_upserted", len(body.records))
    return schemas.UpsertResponse(received=len(body.records), identities=n)


@router.get("", response_model=schemas.RecordPage, dependencies=[ReadAuth])
def list_records(
    session: ReadSession,
    settings: SettingsDep,
    kernel: Annotated[Optional[str], Query(max_length=256, pattern=NO_CONTROL)] = None,
    kernel_hash: Annotated[Optional[str], Query(max_length=64, pattern=NO_CONTROL)] = None,
    env_id: Annotated[Optional[str], Query(max_length=64, pattern=NO_CONTROL)] = None,
    source: Annotated[Optional[str], Query(max_length=32, pattern=NO_CONTROL)] = None,
    after: Annotated[Optional[int], Query(ge=0, le=2**31 - 1, description="the next_after of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
):
    """Records in insertion order, filtered; page with ``after`` = the previous ``next_after``."""
    limit = min(limit, settings.max_page)
    rows, nxt = crud.list_records(session, kernel=kernel, kernel_hash=kernel_hash, env_id=env_id,
                                  source=source, after=after, limit=limit)
    return schemas.RecordPage(items=[crud.record_out(r) for r in rows], next_after=nxt)
