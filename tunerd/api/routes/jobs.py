"""The distributed pretuning queue: submit a workload's jobs, claim them, heartbeat,
finish, and see where a run stands. Every call needs the write token (workers are
trusted writers)."""
from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, HTTPException, Path, Query, status

from tunerd import crud, schemas
from tunerd.deps import DatabaseDep, ReadSession, SettingsDep, WriteAuth, WriteSession

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[WriteAuth])

JobIdPath = Annotated[int, Path(ge=1, le=schemas.INT32_MAX)]
_CONFLICT = {409: {"description": "the job is not running for this worker"}, 404: {"description": "no such job"}}


@router.post("", response_model=schemas.JobSubmitResponse)
def submit(body: schemas.JobSubmit, session: WriteSession, db: DatabaseDep, settings: SettingsDep):
    """Queue a workload's jobs for one environment; idempotent (a job already queued,
    running or finished is counted in ``already``)."""
    if len(body.jobs) > settings.max_batch:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"at most {settings.max_batch} items per request")
    return crud.submit_jobs(session, engine=db.engine, fingerprint=body.fingerprint, jobs=body.jobs,
                            requeue=body.requeue)


@router.post("/claim", response_model=schemas.JobClaimResponse)
def claim(body: schemas.JobClaim, session: WriteSession, db: DatabaseDep, settings: SettingsDep):
    """Atomically move up to ``limit`` claimable jobs of the environment to running for
    ``worker``: queued ones, and running ones whose worker stopped sending heartbeats."""
    env_id = body.fingerprint.to_fingerprint().env_id
    rows = crud.claim_jobs(session, engine=db.engine, env_id=env_id, worker=body.worker,
                           limit=body.limit, lease_s=settings.job_lease_s, max_attempts=settings.job_max_attempts)
    jobs = [crud.job_out(r) for r in rows]
    counts = crud.job_counts(session, env_id=env_id)
    return schemas.JobClaimResponse(jobs=jobs, lease_s=settings.job_lease_s, counts=counts)


@router.post("/{job_id}/heartbeat", response_model=schemas.JobOut, responses=_CONFLICT)
def heartbeat(job_id: JobIdPath, body: schemas.JobHeartbeat, session: WriteSession):
    """Extend the worker's lease on a running job."""
    return _owned(lambda: crud.heartbeat_job(session, job_id=job_id, worker=body.worker), job_id)


@router.post("/{job_id}/finish", response_model=schemas.JobOut, responses=_CONFLICT)
def finish(job_id: JobIdPath, body: schemas.JobFinish, session: WriteSession):
    """Mark the worker's job done (``ok``) or failed (with ``error``); once only."""
    return _owned(lambda: crud.finish_job(session, job_id=job_id, worker=body.worker, ok=body.ok,
                                          error=body.error), job_id)


def _owned(op, job_id: int) -> schemas.JobOut:
    try:
        row = op()
    except crud.JobConflict as e:
        raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no job {job_id}")
    return crud.job_out(row)


@router.get("", response_model=schemas.JobPage)
def list_jobs(
    session: ReadSession,
    settings: SettingsDep,
    env_id: Annotated[Optional[str], Query(max_length=64, pattern=r"^[0-9a-f]+$")] = None,
    status_: Annotated[Optional[schemas.JobStatus], Query(alias="status")] = None,
    after: Annotated[Optional[int], Query(ge=0, le=schemas.INT32_MAX)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 100,
):
    """Counts per status (of one environment, or of all) and a page of jobs."""
    rows, nxt = crud.list_jobs(session, env_id=env_id, status=status_, after=after, limit=min(limit, settings.max_page))
    return schemas.JobPage(env_id=env_id, counts=crud.job_counts(session, env_id=env_id),
                           items=[crud.job_out(r) for r in rows], next_after=nxt)
