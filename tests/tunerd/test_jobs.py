"""The distributed pretuning queue (/v1/jobs) against a real uvicorn, on SQLite and
PostgreSQL: idempotent submission, claims exactly once with 4 worker processes (one
SIGKILLed while holding a job), ownership (409), auth (401), validation (422), lease
expiry and the attempt limit, and gems-pretune --server end to end on the smoke workload."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from tests.tunerd.conftest import REPO, TOKEN, Server

LEASE_S = 2.0
MAX_ATTEMPTS = 2


def fp(device: str | None = None) -> dict:
    return {"vendor": "test", "device_name": device or f"jobs-{uuid.uuid4().hex[:8]}", "compute_capability": "9.0",
            "sm_count": 132, "triton_version": "3.0", "torch_version": "2.5"}


def spec(m: int) -> dict:
    return {"op": "linear", "shapes": [[m, 8], [8, 8]], "dtype": "float32"}


@pytest.fixture(scope="module")
def lease_server(db_url, tmp_path_factory):
    """A second tunerd on the session's DB with a short lease and attempt limit."""
    srv = Server(db_url, tmp_path_factory.mktemp("tunerd-lease"),
                 env={"TUNERD_JOB_LEASE_S": str(LEASE_S), "TUNERD_JOB_MAX_ATTEMPTS": str(MAX_ATTEMPTS)}).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_submit_twice_queues_once(server):
    f = fp()
    jobs = [spec(m) for m in range(1, 6)]
    with server.client() as c:
        r = c.post("/v1/jobs", json={"fingerprint": f, "jobs": jobs + [jobs[0]]})
        assert r.status_code == 200, r.text
        env_id = r.json()["env_id"]
        assert r.json() == {"env_id": env_id, "submitted": 5, "already": 0, "requeued": 0}
        # The same jobs spelled differently (key order, explicit defaults) are the same jobs.
        again = [{"dtype": "float32", "shapes": j["shapes"], "op": "linear", "args": {}} for j in jobs]
        assert c.post("/v1/jobs", json={"fingerprint": f, "jobs": again}).json()["submitted"] == 0
        r = c.post("/v1/jobs", json={"fingerprint": f, "jobs": jobs + [spec(6)]})
        assert (r.json()["submitted"], r.json()["already"]) == (1, 5)
        page = c.get("/v1/jobs", params={"env_id": env_id}).json()
        assert page["counts"] == {"queued": 6, "running": 0, "done": 0, "failed": 0}
        assert sorted(j["spec"]["shapes"][0][0] for j in page["items"]) == [1, 2, 3, 4, 5, 6]
        assert all(j["spec"] == {"op": "linear", "shapes": j["spec"]["shapes"], "dtype": "float32"} for j in page["items"])
        # Another environment has its own queue.
        other = c.post("/v1/jobs", json={"fingerprint": {**f, "sm_count": 1}, "jobs": jobs}).json()
        assert other["submitted"] == 5 and other["env_id"] != env_id
        # Pagination and the status filter.
        claimed = c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w", "limit": 2}).json()
        assert len(claimed["jobs"]) == 2 and claimed["counts"] == {"queued": 4, "running": 2, "done": 0, "failed": 0}
        seen, after = [], None
        while True:
            p = c.get("/v1/jobs", params={"env_id": env_id, "status": "queued", "limit": 3,
                                          **({"after": after} if after else {})}).json()
            seen += [j["id"] for j in p["items"]]
            after = p["next_after"]
            if after is None:
                break
        assert len(seen) == 4 and not {j["id"] for j in claimed["jobs"]} & set(seen)


def test_ownership_conflicts_are_409(server):
    f = fp()
    with server.client() as c:
        c.post("/v1/jobs", json={"fingerprint": f, "jobs": [spec(1), spec(2)]}).raise_for_status()
        job = c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w1"}).json()["jobs"][0]
        assert job["status"] == "running" and job["worker"] == "w1" and job["attempts"] == 1
        jid = job["id"]
        assert c.post(f"/v1/jobs/{jid}/heartbeat", json={"worker": "w2"}).status_code == 409
        assert c.post(f"/v1/jobs/{jid}/finish", json={"worker": "w2", "ok": True}).status_code == 409
        r = c.post(f"/v1/jobs/{jid}/heartbeat", json={"worker": "w1"})
        assert r.status_code == 200 and r.json()["heartbeat_at"] >= job["heartbeat_at"]
        r = c.post(f"/v1/jobs/{jid}/finish", json={"worker": "w1", "ok": True})
        assert r.status_code == 200 and r.json()["status"] == "done" and r.json()["finished_at"]
        # Finished: no second finish, no heartbeat, by anyone.
        assert c.post(f"/v1/jobs/{jid}/finish", json={"worker": "w1", "ok": False, "error": "x"}).status_code == 409
        assert c.post(f"/v1/jobs/{jid}/heartbeat", json={"worker": "w1"}).status_code == 409
        assert c.post("/v1/jobs/2147483647/heartbeat", json={"worker": "w1"}).status_code == 404
        # A failed job keeps its error.
        other = c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w2"}).json()["jobs"][0]
        r = c.post(f"/v1/jobs/{other['id']}/finish", json={"worker": "w2", "ok": False, "error": "RuntimeError: boom\nline 2"})
        assert r.json()["status"] == "failed" and r.json()["error"] == "RuntimeError: boom\nline 2"
        # Nothing claimable, nothing running: an empty claim.
        r = c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w3", "limit": 5}).json()
        assert r["jobs"] == [] and r["counts"] == {"queued": 0, "running": 0, "done": 1, "failed": 1}
        # requeue puts finished jobs back.
        r = c.post("/v1/jobs", json={"fingerprint": f, "jobs": [spec(1), spec(2)], "requeue": True}).json()
        assert (r["submitted"], r["already"], r["requeued"]) == (0, 2, 2)
        assert c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w3", "limit": 5}).json()["jobs"][0]["attempts"] == 1


def test_auth_and_malformed_bodies(server):
    f = fp()
    with server.client() as c:
        c.post("/v1/jobs", json={"fingerprint": f, "jobs": [spec(1)]}).raise_for_status()
    with server.client(auth=False) as anon:
        for method, path, body in [
            ("POST", "/v1/jobs", {"fingerprint": f, "jobs": [spec(1)]}),
            ("POST", "/v1/jobs/claim", {"fingerprint": f, "worker": "w"}),
            ("POST", "/v1/jobs/1/heartbeat", {"worker": "w"}),
            ("POST", "/v1/jobs/1/finish", {"worker": "w", "ok": True}),
            ("GET", "/v1/jobs", None),
        ]:
            r = anon.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert anon.request(method, path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 403
    bad = [
        ("/v1/jobs", {"fingerprint": f, "jobs": []}),
        ("/v1/jobs", {"fingerprint": f, "jobs": [{"shapes": [[1]]}]}),  # no op
        ("/v1/jobs", {"fingerprint": f, "jobs": [{**spec(1), "shapes": [["1", 8]]}]}),  # strings are not dims
        ("/v1/jobs", {"fingerprint": f, "jobs": [{**spec(1), "shapes": [[True, 8]]}]}),
        ("/v1/jobs", {"fingerprint": f, "jobs": [{**spec(1), "phase": "prefill"}]}),  # unknown field
        ("/v1/jobs", {"fingerprint": f, "jobs": [{**spec(1), "args": {"x": "a" * 20_000}}]}),  # too long
        ("/v1/jobs", {"fingerprint": f, "jobs": [{**spec(1), "op": "bad\x00op"}]}),
        ("/v1/jobs", {"fingerprint": {**f, "extra": 1}, "jobs": [spec(1)]}),
        ("/v1/jobs", {"jobs": [spec(1)]}),
        ("/v1/jobs/claim", {"fingerprint": f, "worker": ""}),
        ("/v1/jobs/claim", {"fingerprint": f, "worker": "w", "limit": 0}),
        ("/v1/jobs/claim", {"fingerprint": f, "worker": "w", "limit": 101}),
        ("/v1/jobs/claim", {"fingerprint": f, "worker": "w\nx"}),
        ("/v1/jobs/1/heartbeat", {}),
        ("/v1/jobs/1/finish", {"worker": "w"}),
        ("/v1/jobs/1/finish", {"worker": "w", "ok": "maybe"}),
        ("/v1/jobs/0/finish", {"worker": "w", "ok": True}),
        ("/v1/jobs/2147483648/heartbeat", {"worker": "w"}),
    ]
    with server.client() as c:
        before = c.get("/v1/jobs", params={"limit": 1}).json()["counts"]
        for path, body in bad:
            r = c.post(path, json=body)
            assert r.status_code == 422, (path, body, r.text)
        nan = json.dumps({"fingerprint": f, "jobs": [{**spec(1), "args": {"x": 12345.5}}]}).replace("12345.5", "NaN")
        assert c.post("/v1/jobs", content=nan, headers={"Content-Type": "application/json"}).status_code == 422
        assert c.post("/v1/jobs", content=b"{", headers={"Content-Type": "application/json"}).status_code == 422
        assert c.get("/v1/jobs", params={"status": "bogus"}).status_code == 422
        assert c.get("/v1/jobs", params={"env_id": "not hex"}).status_code == 422
        assert c.get("/v1/jobs", params={"limit": 1}).json()["counts"] == before


def test_lease_expiry_and_attempt_limit(lease_server):
    f = fp()
    with lease_server.client() as c:
        c.post("/v1/jobs", json={"fingerprint": f, "jobs": [spec(1)]}).raise_for_status()
        r = c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w1"}).json()
        assert r["lease_s"] == LEASE_S
        jid = r["jobs"][0]["id"]
        # A heartbeat keeps the lease: nobody else gets the job.
        time.sleep(LEASE_S * 0.6)
        assert c.post(f"/v1/jobs/{jid}/heartbeat", json={"worker": "w1"}).status_code == 200
        time.sleep(LEASE_S * 0.6)
        assert c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w2"}).json()["jobs"] == []
        # No heartbeat for a lease: the job goes to the next worker, and w1 lost it.
        time.sleep(LEASE_S + 0.3)
        got = c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w2"}).json()["jobs"]
        assert [(j["id"], j["worker"], j["attempts"]) for j in got] == [(jid, "w2", 2)]
        assert c.post(f"/v1/jobs/{jid}/heartbeat", json={"worker": "w1"}).status_code == 409
        assert c.post(f"/v1/jobs/{jid}/finish", json={"worker": "w1", "ok": True}).status_code == 409
        # Abandoned again with every attempt used: failed, not handed out a third time.
        time.sleep(LEASE_S + 0.3)
        r = c.post("/v1/jobs/claim", json={"fingerprint": f, "worker": "w3"}).json()
        assert r["jobs"] == [] and r["counts"]["failed"] == 1
        job = c.get("/v1/jobs", params={"env_id": got[0]["env_id"]}).json()["items"][0]
        assert job["status"] == "failed" and "no heartbeat" in job["error"] and job["attempts"] == 2


def _lines(proc: subprocess.Popen, sink: list[str]) -> threading.Thread:
    def pump() -> None:
        for line in proc.stdout:
            sink.append(line.strip())

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    return t


def test_claims_exactly_once_with_4_workers_one_killed(lease_server, tmp_path):
    n_jobs, device = 40, f"conc-{uuid.uuid4().hex[:8]}"
    go = tmp_path / "go"
    worker = Path(__file__).with_name("job_worker.py")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs, logs, pumps = [], [], []
    for i in range(4):
        args = [sys.executable, str(worker), lease_server.url, TOKEN, device, str(n_jobs), str(go)]
        p = subprocess.Popen(args + (["--die"] if i == 0 else []), stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
        procs.append(p)
        logs.append([])
        pumps.append(_lines(p, logs[-1]))
    try:
        deadline = time.monotonic() + 60
        while not all("ready" in log for log in logs):
            assert time.monotonic() < deadline, logs
            assert all(p.poll() is None for p in procs), logs
            time.sleep(0.02)
        # Every worker submitted the same jobs concurrently: queued once.
        assert sum(int(next(x for x in log if x.startswith("submitted")).split()[1]) for log in logs) == n_jobs
        go.touch()
        while not any(x.startswith("claim") for x in logs[0]):
            assert time.monotonic() < deadline, logs[0]
            time.sleep(0.01)
        procs[0].send_signal(signal.SIGKILL)  # dies holding its job: no heartbeat, no finish
        dead_job = int(next(x for x in logs[0] if x.startswith("claim")).split()[1])
        assert procs[0].wait(timeout=10) == -signal.SIGKILL
        for p in procs[1:]:
            assert p.wait(timeout=90) == 0
        for t in pumps:
            t.join(timeout=10)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    claims = Counter(int(x.split()[1]) for log in logs for x in log if x.startswith("claim"))
    finished = Counter(int(x.split()[1]) for log in logs for x in log if x.startswith("finish") and x.endswith(" 1"))
    refused = [x for log in logs for x in log if x.startswith("finish") and x.endswith(" 0")]
    assert refused == []
    assert len(claims) == n_jobs and set(finished) == set(claims)
    assert all(n == 1 for n in finished.values()), finished  # no job finished twice
    assert claims[dead_job] == 2 and all(n == 1 for j, n in claims.items() if j != dead_job), claims
    assert all("exit" in log for log in logs[1:])
    f = fp(device)
    with lease_server.client() as c:
        env_id = c.post("/v1/jobs", json={"fingerprint": f, "jobs": [spec(1)]}).json()["env_id"]
        page = c.get("/v1/jobs", params={"env_id": env_id, "limit": 1000}).json()
        assert page["counts"] == {"queued": 0, "running": 0, "done": n_jobs, "failed": 0}
        attempts = {j["id"]: j["attempts"] for j in page["items"]}
        assert attempts[dead_job] == 2 and sum(attempts.values()) == n_jobs + 1
        # Every job's record reached the records table.
        keys = c.post("/v1/records/lookup", json={"kernel": "jobs_conc", "kernel_hash": "h", "fingerprint": f,
                                                  "keys": [f"[{m}]" for m in range(1, n_jobs + 1)]}).json()
        assert keys["missing"] == []


def test_cli_pretune_server_smoke(server, tmp_path):
    """Two `gems-pretune workloads/smoke.yaml --server URL` share the smoke workload (Triton
    interpreter, real timer): every job done once, every tuned key on the server."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    def cli(i: int) -> subprocess.Popen:
        args = [sys.executable, "-m", "tuner.cli.pretune", str(REPO / "workloads" / "smoke.yaml"), "--server", server.url,
                "--db", str(tmp_path / f"local{i}.db"), "--no-progress", "--report", str(tmp_path / f"r{i}.json")]
        env = dict(os.environ)
        if i == 0:
            args += ["--token-file", str(token_file)]
        else:
            env["FLAGGEMS_TUNERD_TOKEN"] = TOKEN
        return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [cli(0), cli(1)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        assert "queue of this environment" in out and "keys tuned" in out
    reports = [json.loads((tmp_path / f"r{i}.json").read_text()) for i in range(2)]
    env_id = reports[0]["env_id"]
    assert reports[1]["env_id"] == env_id
    n_jobs = reports[0]["submitted"]["submitted"] + reports[0]["submitted"]["already"]
    assert n_jobs > 20 and sum(r["submitted"]["submitted"] for r in reports) == n_jobs  # queued once
    assert sum(r["worker_report"]["claimed"] for r in reports) == n_jobs
    with server.client() as c:
        page = c.get("/v1/jobs", params={"env_id": env_id, "limit": 1000}).json()
        assert page["counts"] == {"queued": 0, "running": 0, "done": n_jobs, "failed": 0}
        assert all(j["attempts"] == 1 for j in page["items"])
        on_server, after = set(), None
        while True:
            p = c.get("/v1/records", params={"env_id": env_id, "limit": 1000, **({"after": after} if after else {})}).json()
            on_server |= {(r["kernel"], r["key"]) for r in p["items"]}
            after = p["next_after"]
            if after is None:
                break
    from tuner.store.sql import SQLStore

    local = set()
    for i in range(2):
        store = SQLStore(str(tmp_path / f"local{i}.db"))
        local |= {(r.identity.kernel, r.identity.key) for r in store.records()}
        store.close()
    tuned_here = {(k["kernel"], k["key"]) for r in reports for k in r["keys"]}
    assert any(k == "flag_gems.ops.mm._mm_kernel" for k, _ in on_server)
    assert tuned_here <= on_server and local == on_server
