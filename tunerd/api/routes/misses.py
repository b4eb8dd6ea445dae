"""Keys that ran untuned (``FLAGGEMS_AUTOTUNE=never``): record them, list them."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, HTTPException, Query, status

from tunerd import crud, schemas
from tunerd.schemas import NO_CONTROL
from tunerd.deps import DatabaseDep, MetricsDep, ReadAuth, ReadSession, SettingsDep, WriteAuth, WriteSession

router = APIRouter(prefix="/misses", tags=["misses"])


@router.post("", response_model=schemas.MissBatchResponse, dependencies=[WriteAuth])
def record(body: schemas.MissBatch, session: WriteSession, db: DatabaseDep, settings: SettingsDep, metrics: MetricsDep):
    if len(body.misses) > settings.max_batch:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"at most {settings.max_batch} items per request")
    n = crud.record_misses(session, engine=db.engine, misses=body.misses)
    metrics.add("misses_recorded", n)
    return schemas.MissBatchResponse(received=n)


@router.get("", response_model=schemas.MissPage, dependencies=[ReadAuth])
def list_misses(
    session: ReadSession,
    settings: SettingsDep,
    kernel: Annotated[Optional[str], Query(max_length=256, pattern=NO_CONTROL)] = None,
    env_id: Annotated[Optional[str], Query(max_length=64, pattern=NO_CONTROL)] = None,
    after: Annotated[Optional[int], Query(ge=0, le=2**31 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
):
    rows, nxt = crud.list_misses(session, kernel=kernel, env_id=env_id, after=after, limit=min(limit, settings.max_page))
    return schemas.MissPage(items=[crud.miss_out(r) for r in rows], next_after=nxt)
