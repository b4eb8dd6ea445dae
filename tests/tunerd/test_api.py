"""tunerd's HTTP API against a real uvicorn, on SQLite and PostgreSQL."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.tunerd.conftest import MAX_BODY, TOKEN
from tests.tunerd.upsert_worker import FP as WORKER_FP, median as worker_median

FP = {"vendor": "nvidia", "device_name": "NVIDIA H100", "compute_capability": "9.0", "sm_count": 132,
      "triton_version": "3.1.0", "torch_version": "2.5.1"}


def rec(key: str, median: float, *, kernel: str = "rms_norm", host: str = "a", **kw) -> dict:
    return {"kernel": kernel, "kernel_hash": "abc123", "key": key, "fingerprint": FP,
            "config": {"BLOCK": 128, "num_warps": 4}, "median_ms": median, "p20_ms": median * 0.9,
            "p80_ms": median * 1.1, "configs_tried": 5, "source": "pretune", "host": host, "tool_version": "0.1.0",
            **kw}


def lookup(c: httpx.Client, keys: list[str], kernel: str = "rms_norm") -> dict:
    r = c.post("/v1/records/lookup", json={"kernel": kernel, "kernel_hash": "abc123", "fingerprint": FP, "keys": keys})
    assert r.status_code == 200, r.text
    return r.json()


def counts(c: httpx.Client) -> dict:
    r = c.get("/v1/stats")
    assert r.status_code == 200, r.text
    return r.json()


def test_round_trip(server):
    with server.client() as c:
        before = counts(c)
        body = {"records": [
            rec("[1024,\"float16\"]", 2.0, timings=[{"config": {"BLOCK": 128}, "median_ms": 2.0},
                                                    {"config": {"BLOCK": 64}, "median_ms": None, "error": "OOM\nregs"}]),
            rec("[2048,\"float16\"]", 3.0),
            rec("[4096,\"float16\"]", 4.0),
        ]}
        r = c.post("/v1/records", json=body)
        assert r.status_code == 200, r.text
        assert r.json() == {"received": 3, "identities": 3}
        got = lookup(c, ["[1024,\"float16\"]", "[2048,\"float16\"]", "[8192,\"float16\"]"])
        assert got["missing"] == ["[8192,\"float16\"]"]
        by_key = {d["key"]: d for d in got["records"]}
        assert set(by_key) == {"[1024,\"float16\"]", "[2048,\"float16\"]"}
        d = by_key["[1024,\"float16\"]"]
        assert d["config"] == {"BLOCK": 128, "num_warps": 4} and d["median_ms"] == 2.0 and d["host"] == "a"
        assert d["fingerprint"] == {**FP, "env_id": d["env_id"]} and d["source"] == "pretune"

        # Idempotent: the same batch again changes nothing.
        assert c.post("/v1/records", json=body).status_code == 200
        assert lookup(c, ["[1024,\"float16\"]"])["records"][0] == d
        # Slower: kept out. Faster: wins, with its provenance.
        assert c.post("/v1/records", json={"records": [rec("[1024,\"float16\"]", 5.0, host="slow")]}).status_code == 200
        assert lookup(c, ["[1024,\"float16\"]"])["records"][0]["host"] == "a"
        r = c.post("/v1/records", json={"records": [rec("[1024,\"float16\"]", 1.5, host="fast", config={"BLOCK": 256}),
                                                    rec("[1024,\"float16\"]", 1.0, host="fastest", config={"BLOCK": 512})]})
        assert r.json() == {"received": 2, "identities": 1}
        best = lookup(c, ["[1024,\"float16\"]"])["records"][0]
        assert (best["host"], best["median_ms"], best["config"]) == ("fastest", 1.0, {"BLOCK": 512})
        # Another environment is another row.
        other = {**FP, "device_name": "NVIDIA A100"}
        assert c.post("/v1/records", json={"records": [{**rec("[1024,\"float16\"]", 9.0), "fingerprint": other}]}).status_code == 200
        assert lookup(c, ["[1024,\"float16\"]"])["records"][0]["median_ms"] == 1.0
        assert counts(c)["records"] == before["records"] + 4


def test_list_and_pagination(server):
    with server.client() as c:
        assert c.post("/v1/records", json={"records": [rec(f"[{i}]", 1.0, kernel="paged") for i in range(7)]}).status_code == 200
        seen, after = [], None
        while True:
            params = {"kernel": "paged", "limit": 3, **({"after": after} if after is not None else {})}
            page = c.get("/v1/records", params=params).json()
            seen += [d["key"] for d in page["items"]]
            after = page["next_after"]
            if after is None:
                break
        assert seen == [f"[{i}]" for i in range(7)]
        assert c.get("/v1/records", params={"kernel": "paged", "source": "online"}).json()["items"] == []
        assert c.get("/v1/records", params={"limit": 0}).status_code == 422
        # Found by the fuzz: values PostgreSQL cannot bind are refused, not 500s.
        assert c.get("/v1/records", params={"after": 2**31}).status_code == 422
        assert c.get("/v1/records", params={"kernel": "a\x00b"}).status_code == 422
        assert c.get("/v1/misses", params={"kernel": "a\x00b"}).status_code == 422


def test_misses(server):
    with server.client() as c:
        miss = {"kernel": "missy", "kernel_hash": "abc123", "key": "[77]", "fingerprint": FP, "raw_args": "[77.5]"}
        assert c.post("/v1/misses", json={"misses": [miss, miss, {**miss, "key": "[78]", "count": 3}]}).status_code == 200
        assert c.post("/v1/misses", json={"misses": [miss]}).status_code == 200
        items = {m["key"]: m for m in c.get("/v1/misses", params={"kernel": "missy"}).json()["items"]}
        assert items["[77]"]["count"] == 3 and items["[78]"]["count"] == 3 and items["[77]"]["raw_args"] == "[77.5]"
        # Tuning a missed key clears its miss.
        assert c.post("/v1/records", json={"records": [rec("[77]", 1.0, kernel="missy")]}).status_code == 200
        items = [m["key"] for m in c.get("/v1/misses", params={"kernel": "missy"}).json()["items"]]
        assert items == ["[78]"]


def test_auth(server):
    body = {"records": [rec("[5]", 1.0, kernel="auth")]}
    with server.client(auth=False) as c:
        r = c.post("/v1/records", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert c.post("/v1/records", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 403
        assert c.post("/v1/records", json=body, headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
        assert c.post("/v1/misses", json={"misses": []}).status_code in (401, 422)
        assert c.post("/v1/misses", json={"misses": [{"kernel": "a", "kernel_hash": "b", "key": "[1]",
                                                      "fingerprint": FP}]}).status_code == 401
        # Reads are open unless configured otherwise.
        assert lookup(c, ["[5]"], kernel="auth")["missing"] == ["[5]"]
    with server.client() as c:
        assert c.post("/v1/records", json=body).status_code == 200


BAD_RECORDS = [
    {"median_ms": -1.0},
    {"median_ms": 1e300},
    {"p20_ms": "fast"},
    {"configs_tried": 0},
    {"configs_tried": 2**31},
    {"key": "[1, 2]"},  # not canonical
    {"key": "{\"a\":1}"},  # not a list
    {"key": "not json"},
    {"key": "[" + "1," * 3000 + "1]"},  # too long
    {"kernel": ""},
    {"kernel": "k" * 257},
    {"kernel": "bad\x00name"},
    {"host": "h\nx"},
    {"source": "Evil Source"},
    {"config": {"BLOCK": [1, 2]}},
    {"config": {"x" * 65: 1}},
    {"fingerprint": {**FP, "sm_count": 2**40}},
    {"fingerprint": {**FP, "extra": 1}},
    {"unknown_field": 1},
    {"timings": [{"config": {}, "median_ms": -3}]},
]


def test_malformed_bodies_are_422_and_change_nothing(server):
    with server.client() as c:
        assert c.post("/v1/records", json={"records": [rec("[1]", 1.0, kernel="valid")]}).status_code == 200
        before = counts(c)
        for bad in BAD_RECORDS:
            r = c.post("/v1/records", json={"records": [rec("[1]", 0.5, kernel="valid"), {**rec("[2]", 1.0), **bad}]})
            assert r.status_code == 422, (bad, r.text)
        raw = [b"{", b"[]", b"null", b'{"records": []}', b'{"records": {}}',
               json.dumps({"records": [rec("[1]", 12345.0)]}).replace("12345.0", "NaN", 1).encode(),
               json.dumps({"records": [rec("[1]", 12345.0)]}).replace("12345.0", "-Infinity", 1).encode()]
        for body in raw:
            r = c.post("/v1/records", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, (body, r.text)
        r = c.post("/v1/records/lookup", json={"kernel": "k", "kernel_hash": "h", "fingerprint": FP,
                                               "keys": ["[1]"] * 1001})
        assert r.status_code == 422
        assert c.post("/v1/records/lookup", json={"kernel": "k"}).status_code == 422
        assert counts(c) == before
        assert lookup(c, ["[1]"], kernel="valid")["records"][0]["median_ms"] == 1.0


def test_oversize_bodies_are_413(server):
    big = b'{"records": [' + b" " * (MAX_BODY + 10) + b"]}"
    with server.client() as c:
        r = c.post("/v1/records", content=big, headers={"Content-Type": "application/json"})
        assert r.status_code == 413

        def chunks():  # no Content-Length: the streamed body is counted
            for _ in range(MAX_BODY // 4096 + 2):
                yield b" " * 4096

        with server.client() as c2:
            r = c2.post("/v1/records", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
        assert c.get("/healthz").status_code == 200


def test_health_metrics_and_docs(server):
    with server.client() as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ok"}
        lookup(c, ["[1]", "[999999]"])
        text = c.get("/metrics").text
        assert "tunerd_lookup_hits_total" in text and "tunerd_lookup_misses_total" in text
        assert 'tunerd_requests_total{method="POST",route="/v1/records/lookup",status="200"}' in text
        assert 'tunerd_rows{table="records"}' in text and "tunerd_request_duration_seconds_bucket" in text
        spec = c.get("/openapi.json").json()
        assert {"/v1/records/lookup", "/v1/records", "/v1/misses", "/v1/stats"} <= set(spec["paths"])
        assert c.get("/docs").status_code == 200


def test_concurrent_upserts_from_8_processes(server):
    n_shared, n_own, workers = 60, 40, 8
    worker = Path(__file__).with_name("upsert_worker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), server.url, TOKEN, str(w), str(n_shared), str(n_own)])
             for w in range(workers)]
    assert [p.wait(timeout=120) for p in procs] == [0] * workers
    with server.client() as c:
        rows, after = [], None
        while True:
            page = c.get("/v1/records", params={"kernel": "conc", "limit": 1000,
                                                **({"after": after} if after else {})}).json()
            rows += page["items"]
            after = page["next_after"]
            if after is None:
                break
    assert len(rows) == n_shared + workers * n_own
    by_key = {r["key"]: r for r in rows}
    assert len(by_key) == len(rows)
    for i in range(n_shared):
        best = min(worker_median(w, i) for w in range(workers))
        assert by_key[f"[{i},\"shared\"]"]["median_ms"] == best
        # The provenance is the winner's.
        winner = by_key[f"[{i},\"shared\"]"]
        assert worker_median(int(winner["host"][1:]), i) == best
    for w in range(workers):
        for i in range(n_own):
            assert f"[{i},\"w{w}\"]" in by_key
    assert all(r["fingerprint"] == {**WORKER_FP, "env_id": r["env_id"]} for r in rows)


def _noise(n: int, seed: int) -> str:
    """Incompressible printable ASCII (PostgreSQL compresses index rows before checking their size)."""
    import random
    import string

    rnd = random.Random(seed)
    return "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))


def test_widest_valid_rows_fit_every_backend(server):
    """Audit: on PostgreSQL a valid 3954-character key was a 503 (the unique btree index
    row exceeded 2704 bytes). Keys and configs are now capped so that every valid request
    can be stored on every backend; longer ones are a clear 422."""
    from tunerd.schemas import MAX_CONFIG_JSON_CHARS, MAX_KEY_CHARS

    long_key = json.dumps([_noise(3950, 1)])
    assert len(long_key) == 3954
    miss = {"kernel": "wide", "kernel_hash": "abc123", "key": long_key, "fingerprint": FP}
    with server.client() as c:
        before = counts(c)
        r = c.post("/v1/records", json={"records": [rec(long_key, 1.0, kernel="wide")]})
        assert r.status_code == 422 and "key" in r.text, r.text
        assert c.post("/v1/misses", json={"misses": [miss]}).status_code == 422
        assert c.post("/v1/records/lookup", json={"kernel": "wide", "kernel_hash": "abc123", "fingerprint": FP,
                                                  "keys": [long_key]}).status_code == 422
        assert c.post("/v1/records", json={"records": [rec("[1]", 1.0, kernel="\U0001F600" * 100)]}).status_code == 422
        # The widest accepted row, with incompressible values, is stored (record, timing, miss).
        key = json.dumps([_noise(MAX_KEY_CHARS - 4, 2)])
        kernel, khash = _noise(256, 3), _noise(64, 4)
        config = {"a": _noise(256, 5), "b": _noise(256, 6)}
        config["c"] = _noise(MAX_CONFIG_JSON_CHARS - len(json.dumps(config, separators=(",", ":"))) - 7, 7)
        assert len(json.dumps(config, separators=(",", ":"))) == MAX_CONFIG_JSON_CHARS
        wide = {**rec(key, 1.0, kernel=kernel), "kernel_hash": khash, "config": config,
                "timings": [{"config": config, "median_ms": 1.0}]}
        r = c.post("/v1/records", json={"records": [wide]})
        assert r.status_code == 200, r.text
        assert c.post("/v1/misses", json={"misses": [{**miss, "kernel": kernel, "kernel_hash": khash,
                                                       "key": json.dumps([_noise(MAX_KEY_CHARS - 4, 8)])}]}).status_code == 200
        too_wide = {**wide, "config": {**config, "c": config["c"] + "x"}}
        assert c.post("/v1/records", json={"records": [too_wide]}).status_code == 422
        got = c.post("/v1/records/lookup", json={"kernel": kernel, "kernel_hash": khash, "fingerprint": FP,
                                                 "keys": [key]}).json()
        assert got["missing"] == [] and got["records"][0]["config"] == config
        after = counts(c)
        assert (after["records"], after["timings"], after["misses"]) == (before["records"] + 1, before["timings"] + 1,
                                                                          before["misses"] + 1)
