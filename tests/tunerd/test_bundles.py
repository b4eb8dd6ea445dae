"""Export and import streams (GET /v1/export, POST /v1/import) in the bundle format, on
SQLite and PostgreSQL: a round trip into a second, empty server gives identical rows; a
bad bundle is a 422 that changes nothing."""
from __future__ import annotations

import contextlib
import dataclasses
import io
import tarfile

import pytest

from tests.pg import fresh_schema_or_skip
from tests.tunerd.conftest import Server
from tuner import bundle as bd
from tuner.fingerprint import Fingerprint
from tuner.store.base import Identity, Record

FP = {"vendor": "nvidia", "device_name": "NVIDIA H100", "compute_capability": "9.0", "sm_count": 132,
      "triton_version": "3.1.0", "torch_version": "2.5.1"}
OTHER = {**FP, "device_name": "NVIDIA A100", "sm_count": 108}


def rec(kernel: str, key: str, median: float, fp: dict = FP, **kw) -> dict:
    return {"kernel": kernel, "kernel_hash": "kh1", "key": key, "fingerprint": fp,
            "config": {"BLOCK": 64, "num_warps": 4}, "median_ms": median, "p20_ms": median * 0.9,
            "p80_ms": median * 1.1, "configs_tried": 3, "source": "pretune", "host": "node-a", **kw}


def rows(c, path: str, **params) -> list[dict]:
    out, after = [], None
    while True:
        page = c.get(path, params={**params, "limit": 1000, **({"after": after} if after else {})}).json()
        out += page["items"]
        after = page["next_after"]
        if after is None:
            return [{k: v for k, v in r.items() if k != "id"} for r in out]


@pytest.fixture
def empty_server(db_url, tmp_path):
    """A second tunerd on a fresh, empty DB of the same backend."""
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(fresh_schema_or_skip("tunerd")) if "://" in db_url else str(tmp_path / "second.db")
        srv = Server(url, tmp_path).start()
        try:
            yield srv
        finally:
            srv.stop()


def test_export_import_round_trip(server, empty_server):
    kernel = "bundle_rt"
    with server.client() as c:
        body = {"records": [
            rec(kernel, "[1]", 1.0, timings=[{"config": {"BLOCK": 64, "num_warps": 4}, "median_ms": 1.0},
                                             {"config": {"BLOCK": 32}, "median_ms": None, "error": "OOM"}]),
            rec(kernel, "[2,\"float16\"]", 2.5, created_at="2025-01-02T03:04:05.123456+00:00"),
            rec(kernel, "[1]", 3.0, fp=OTHER),
        ]}
        assert c.post("/v1/records", json=body).status_code == 200
        miss = {"kernel": kernel, "kernel_hash": "kh1", "key": "[9]", "fingerprint": FP, "raw_args": "[9.5]", "count": 4}
        assert c.post("/v1/misses", json={"misses": [miss]}).status_code == 200
        r = c.get("/v1/export", params={"kernel": kernel})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/octet-stream"
        assert r.headers["content-disposition"].startswith('attachment; filename="tunerd-') and ".tdb" in r.headers["content-disposition"]
        blob = r.content
        data = bd.read_bundle_bytes(blob)
        assert (len(data.records), data.n_timings, len(data.misses)) == (3, 2, 1)
        assert data.manifest.filters["kernel"] == kernel
        src_records, src_misses = rows(c, "/v1/records", kernel=kernel), rows(c, "/v1/misses", kernel=kernel)
        # Filters: one environment, by env_id or by device.
        env_id = src_records[0]["env_id"] if src_records[0]["fingerprint"]["device_name"] == "NVIDIA H100" else src_records[1]["env_id"]
        one = bd.read_bundle_bytes(c.get("/v1/export", params={"kernel": kernel, "env_id": env_id}).content)
        assert {r.identity.env_id for r in one.records} == {env_id} and len(one.records) == 2 and one.n_timings == 2
        by_dev = bd.read_bundle_bytes(c.get("/v1/export", params={"kernel": kernel, "device": "a100"}).content)
        assert [r.identity.fingerprint.device_name for r in by_dev.records] == ["NVIDIA A100"]
    with empty_server.client() as c2:
        assert c2.get("/v1/stats").json()["records"] == 0
        r = c2.post("/v1/import", content=blob, headers={"Content-Type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        assert r.json() == {"policy": "faster", "records": 3, "records_written": 3, "timings_written": 2,
                            "misses_written": 1, "verdicts": {"new": 3, "better": 0, "worse": 0, "equal": 0,
                                                              "conflicting": 0}, "kernel_files_ignored": 0}
        assert rows(c2, "/v1/records", kernel=kernel) == src_records
        assert rows(c2, "/v1/misses", kernel=kernel) == src_misses
        # Exporting again gives byte-identical data members (rows sorted, gzip without mtime).
        again = bd.read_bundle_bytes(c2.get("/v1/export").content)
        assert again.manifest.files == data.manifest.files
        # Importing the same bundle again: everything equal, nothing written under keep.
        r = c2.post("/v1/import", params={"policy": "keep"}, content=blob)
        assert r.json()["verdicts"]["equal"] == 3 and r.json()["records_written"] == 0
        assert c2.get("/v1/stats").json()["records"] == 3


def _bundle(*records: Record) -> bytes:
    return bd.bundle_bytes(bd.BundleData(records=list(records)))


def _record(key: str = "[1]", **kw) -> Record:
    fp = Fingerprint(**FP)
    return Record(Identity(kw.pop("kernel", "bundle_bad"), "kh1", key, fp), {"BLOCK": 8}, 1.0, 1.0, 1.0, 2, **kw)


def _tamper(blob: bytes) -> bytes:
    """Flip one byte inside records.jsonl.gz (its checksum no longer matches)."""
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        m = tf.getmember(bd.RECORDS)
    pos = m.offset_data + m.size // 2
    return blob[:pos] + bytes([blob[pos] ^ 0xFF]) + blob[pos + 1:]


def test_bad_bundles_are_422_and_change_nothing(server):
    good = _bundle(_record("[1]"), _record("[2]"))
    with server.client() as c:
        before = c.get("/v1/stats").json()
        cases = {
            "truncated": (good[:-100], "truncated"),
            "cut in the records": (good[:1536], ""),
            "tampered": (_tamper(good), "sha256"),
            "not a bundle": (b"hello" * 200, ""),
            "empty": (b"", "too short"),
            "key too long for tunerd": (_bundle(_record("[1]"), _record("[" + ",".join(["12345"] * 400) + "]")), "key"),
            "key not canonical": (_bundle(_record("[1, 2]")), "canonical"),
            "control character": (_bundle(_record("[3]", host="a\x00b")), "host"),
            "count out of range": (_bundle(dataclasses.replace(_record("[4]"), configs_tried=2**31)), "configs_tried"),
        }
        for name, (blob, why) in cases.items():
            r = c.post("/v1/import", content=blob, headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 422, (name, r.text)
            assert why in r.json()["detail"], (name, r.text)
        assert c.post("/v1/import", params={"policy": "bogus"}, content=good).status_code == 422
        with server.client(auth=False) as anon:
            assert anon.post("/v1/import", content=good).status_code == 401
        assert c.get("/v1/stats").json() == before
        assert c.get("/v1/records", params={"kernel": "bundle_bad"}).json()["items"] == []
        # The good one goes in.
        assert c.post("/v1/import", content=good).json()["records_written"] == 2


def test_gzip_bomb_is_refused_before_inflating(server):
    """A small bundle whose records member inflates far past the server's limit."""
    import gzip
    import hashlib
    import json

    huge = gzip.compress(b" " * (64 << 20), compresslevel=9)  # 64 MiB of spaces in ~64 KiB
    members = {bd.RECORDS: huge, bd.TIMINGS: gzip.compress(b""), bd.MISSES: gzip.compress(b"")}
    manifest = {"format": bd.FORMAT_NAME, "format_version": 1, "created_at": "2026-01-01T00:00:00+00:00",
                "tool_version": "0", "host": "h", "filters": {},
                "counts": {"records": 0, "timings": 0, "misses": 0, "kernel_files": 0},
                "files": {n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b)} for n, b in members.items()}}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, b in [(bd.MANIFEST, json.dumps(manifest).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(b)
            tf.addfile(info, io.BytesIO(b))
    with server.client() as c:
        r = c.post("/v1/import", content=buf.getvalue())
        assert r.status_code == 422 and "decompresses to more than" in r.json()["detail"], r.text
