"""Liveness, readiness and Prometheus metrics (outside ``/v1``)."""
from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from tunerd import crud, schemas
from tunerd.deps import DatabaseDep, MetricsDep

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=schemas.Health)
def healthz():
    """The process is up."""
    return schemas.Health(status="ok")


@router.get("/readyz", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
def readyz(db: DatabaseDep):
    """The database answers."""
    try:
        db.ping()
    except Exception as e:
        log.warning("readiness check failed: %s", e)
        return JSONResponse({"status": "database unavailable"}, status_code=503)
    return schemas.Health(status="ok")


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(db: DatabaseDep, m: MetricsDep):
    """Prometheus text exposition."""
    try:
        with db.read() as s:
            rows = crud.count_rows(s)
    except Exception as e:
        log.warning("cannot count rows for /metrics: %s", e)
        rows = None
    return PlainTextResponse(m.render(rows), media_type="text/plain; version=0.0.4; charset=utf-8")
