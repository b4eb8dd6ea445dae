"""The client of tunerd's distributed pretuning queue (``/v1/jobs``) and the worker loop.

Every machine running ``gems-pretune WORKLOAD --server URL`` submits the workload's jobs
(the server keeps each job once per environment), then works as a worker: claim one job,
keep its lease alive with a heartbeat thread while it runs, upload the tuning records it
produced, finish it; repeat. A worker that dies stops sending heartbeats and its job goes
back to the queue after the server's lease. The loop ends when the environment has no
queued and no running job left, so jobs of a dead machine are picked up by the others.

This module knows nothing about workloads or kernels: ``work`` runs any callable per job
(``tuner.pretune.run_distributed`` plugs in the pretune machinery). It speaks HTTP with
httpx and never imports tunerd.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import httpx

from tuner.fingerprint import Fingerprint
from tuner.store.base import Identity, Record
from tuner.store.remote import API, MAX_BATCH, RemoteStore, fingerprint_json

log = logging.getLogger(__name__)

_RETRY_STATUS = {502, 503, 504}


class JobServerError(RuntimeError):
    """tunerd refused a queue request, or stayed unreachable through every retry."""


@dataclass
class Claim:
    jobs: list[dict[str, Any]]
    lease_s: float
    counts: dict[str, int]


class JobClient:
    """Blocking calls to ``/v1/jobs`` and ``/v1/records`` with retries: a worker outlives a
    tunerd restart of up to about ``sum(backoff)`` seconds."""

    def __init__(self, url: str, token: str | None = None, *, timeout_s: float = 30.0,
                 backoff_s: Sequence[float] = (0.5, 1.0, 2.0, 4.0, 8.0),
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout_s),
                                    transport=transport)
        self.backoff_s = tuple(backoff_s)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> "JobClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- plumbing ----------------------------------------------------------------------
    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """The response to one request, retried on connection errors and 502/503/504."""
        last = ""
        for delay in (*self.backoff_s, None):
            try:
                r = self._client.request(method, API + path, **kw)
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code not in _RETRY_STATUS:
                    return r
                last = f"HTTP {r.status_code}"
            if delay is None:
                break
            log.warning("tunerd %s %s failed (%s); retrying in %.1f s", method, path, last, delay)
            time.sleep(delay)
        raise JobServerError(f"tunerd at {self.url} unavailable ({method} {path}: {last})")

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = self._send(method, path, **kw)
        if r.status_code != 200:
            raise JobServerError(_why(r, method, path))
        return r.json()

    # -- the queue ---------------------------------------------------------------------
    def submit(self, fingerprint: Fingerprint, specs: Sequence[dict[str, Any]], *,
               requeue: bool = False) -> dict[str, int]:
        """Queue jobs (``Job.as_dict()``s) for an environment; totals of every batch."""
        out = {"submitted": 0, "already": 0, "requeued": 0}
        for start in range(0, len(specs), MAX_BATCH):
            got = self._json("POST", "/jobs", json={
                "fingerprint": fingerprint_json(fingerprint), "jobs": list(specs[start:start + MAX_BATCH]),
                "requeue": requeue,
            })
            for k in out:
                out[k] += got[k]
        return out

    def claim(self, fingerprint: Fingerprint, worker: str, limit: int = 1) -> Claim:
        got = self._json("POST", "/jobs/claim", json={
            "fingerprint": fingerprint_json(fingerprint), "worker": worker, "limit": limit,
        })
        return Claim(got["jobs"], float(got["lease_s"]), got["counts"])

    def heartbeat(self, job_id: int, worker: str) -> bool:
        """False: the job is no longer this worker's (its lease went to another)."""
        return self._owned("heartbeat", job_id, {"worker": worker})

    def finish(self, job_id: int, worker: str, ok: bool, error: str | None = None) -> bool:
        """False: the job is no longer this worker's; another worker's finish counts."""
        return self._owned("finish", job_id, {"worker": worker, "ok": ok, "error": error[:4096] if error else None})

    def _owned(self, what: str, job_id: int, body: dict[str, Any]) -> bool:
        path = f"/jobs/{job_id}/{what}"
        r = self._send("POST", path, json=body)
        if r.status_code == 409:
            return False
        if r.status_code != 200:
            raise JobServerError(_why(r, "POST", path))
        return True

    def counts(self, env_id: str) -> dict[str, int]:
        return self._json("GET", "/jobs", params={"env_id": env_id, "limit": 1})["counts"]

    # -- results -----------------------------------------------------------------------
    def upload_records(self, items: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """POST records (``record_json``) in batches; a batch refused as too large (413)
        or invalid (422) is halved down to single records, so one bad or huge record is
        the only one lost. Returns (uploaded, rejected)."""
        uploaded = rejected = 0
        pending = [list(items[i:i + MAX_BATCH]) for i in range(0, len(items), MAX_BATCH)]
        while pending:
            batch = pending.pop()
            r = self._send("POST", "/records", json={"records": batch})
            if r.status_code == 200:
                uploaded += len(batch)
            elif r.status_code in (413, 422) and len(batch) > 1:
                half = len(batch) // 2
                pending += [batch[half:], batch[:half]]
            elif r.status_code in (413, 422):
                rejected += 1
                log.warning("tunerd rejected a record of %s: %s", batch[0].get("kernel"), _why(r, "POST", "/records"))
            else:
                raise JobServerError(_why(r, "POST", "/records"))
        return uploaded, rejected


def _why(r: httpx.Response, method: str, path: str) -> str:
    try:
        detail = r.json().get("detail")
    except ValueError:
        detail = r.text[:300]
    if r.status_code in (401, 403):
        return f"tunerd refused the token on {method} {API}{path} (HTTP {r.status_code}): set FLAGGEMS_TUNERD_TOKEN or --token-file"
    return f"tunerd answered HTTP {r.status_code} on {method} {API}{path}: {str(detail)[:500]}"


class ReadOnlyRemote(RemoteStore):
    """tunerd as the bottom store layer of a worker: keys another machine already tuned
    are hits. Saves are not uploaded from here (the worker uploads each job's records
    itself before finishing the job); ``served`` remembers what came from tunerd."""

    def __init__(self, url: str, token: str | None, *, timeout_s: float = 2.0) -> None:
        super().__init__(url, token, timeout_s=timeout_s, breaker_s=10.0, confirm_misses=True)
        self.served: set[Identity] = set()

    def lookup(self, ident: Identity) -> Record | None:
        rec = super().lookup(ident)
        if rec is not None:
            self.served.add(ident)
        return rec

    def save(self, record: Record, timings: Sequence[Any] = ()) -> None:
        pass

    def record_miss(self, miss: Any) -> None:
        pass


# -- the worker loop ---------------------------------------------------------------------------
@dataclass
class JobResult:
    ok: bool
    error: str | None = None
    records: list[dict[str, Any]] = field(default_factory=list)  # record_json()s to upload


@dataclass
class WorkerReport:
    worker: str
    claimed: int = 0
    done: int = 0
    failed: int = 0
    lost: int = 0  # finished too late: the lease had gone to another worker
    records_uploaded: int = 0
    records_rejected: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # the environment's queue at the end
    wall_s: float = 0.0


class Heartbeat:
    """A daemon thread renewing a job's lease every ``interval_s`` while the job runs."""

    def __init__(self, client: JobClient, job_id: int, worker: str, interval_s: float) -> None:
        self.client, self.job_id, self.worker, self.interval_s = client, job_id, worker, interval_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if not self.client.heartbeat(self.job_id, self.worker):
                    self.lost = True
                    log.warning("job %d: the lease went to another worker; finishing it anyway is refused", self.job_id)
                    return
            except JobServerError as e:  # keep running; the next beat may get through
                log.warning("job %d: heartbeat failed: %s", self.job_id, e)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5.0)


def work(
    client: JobClient,
    fingerprint: Fingerprint,
    worker: str,
    run: Callable[[dict[str, Any]], JobResult],
    *,
    on_claim: Callable[[dict[str, Any]], None] | None = None,
    on_finish: Callable[[dict[str, Any], JobResult, bool], None] | None = None,
    on_counts: Callable[[dict[str, int]], None] | None = None,
    max_poll_s: float = 5.0,
) -> WorkerReport:
    """Claim, run, upload, finish, one job at a time, until the environment's queue has
    nothing queued or running. While other workers still run jobs, poll: a job whose
    worker died comes back after its lease. ``run`` gets the job's spec."""
    report = WorkerReport(worker=worker)
    t0 = time.perf_counter()
    while True:
        claim = client.claim(fingerprint, worker, 1)
        report.counts = claim.counts
        if on_counts is not None:
            on_counts(claim.counts)
        if not claim.jobs:
            if not claim.counts.get("queued") and not claim.counts.get("running"):
                break
            time.sleep(min(max(claim.lease_s / 4, 0.05), max_poll_s))
            continue
        job = claim.jobs[0]
        report.claimed += 1
        if on_claim is not None:
            on_claim(job)
        # Three beats per lease: one lost request does not cost the lease.
        with Heartbeat(client, job["id"], worker, max(claim.lease_s / 3, 0.05)):
            try:
                result = run(job["spec"])
            except Exception as e:  # a broken job must not stop the worker
                log.exception("job %d failed", job["id"])
                result = JobResult(ok=False, error=f"{type(e).__name__}: {e}")
            if result.records:
                up, bad = client.upload_records(result.records)
                report.records_uploaded += up
                report.records_rejected += bad
        accepted = client.finish(job["id"], worker, result.ok, result.error)
        if not accepted:
            report.lost += 1
        elif result.ok:
            report.done += 1
        else:
            report.failed += 1
        if on_finish is not None:
            on_finish(job, result, accepted)
    report.wall_s = time.perf_counter() - t0
    return report
