"""RemoteStore (the tunerd layer of the tuning store) against a real tunerd on SQLite,
including tunerd stopped mid-run and a tunerd that accepts connections but never answers."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.tunerd.conftest import TOKEN, Server
from tuner.fingerprint import Fingerprint
from tuner.store.base import Identity, MemoryStore, Miss, Record, Timing
from tuner.store.remote import RemoteStore, record_json

FP = Fingerprint("nvidia", "NVIDIA H100", "9.0", 132, "3.1.0", "2.5.1")


def ident(i: int, kernel: str = "softmax_client") -> Identity:
    return Identity(kernel, "k1", f"[{i},\"float32\"]", FP)


def record(i: int, median: float = 1.0, kernel: str = "softmax_client") -> Record:
    return Record(ident(i, kernel), {"BLOCK": 64 * (i % 4 + 1), "num_warps": 4}, median, median, median, 3,
                  source="online", host="node-a")


@pytest.fixture
def live(tmp_path):
    srv = Server(str(tmp_path / "tunerd.db"), tmp_path).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_round_trip_through_remote_store(server):
    live = server
    up = RemoteStore(live.url, TOKEN, timeout_s=2.0)
    for i in range(5):
        up.save(record(i), [Timing({"BLOCK": 64}, 1.0), Timing({"BLOCK": 32}, None, error="failed"),
                            Timing({"BLOCK": 16}, float("inf"))])
    up.record_miss(Miss(ident(99), raw_args="[99]"))
    assert up.flush(20.0)
    assert up.counters["uploaded_records"] == 5 and up.counters["uploaded_misses"] == 1
    up.close()

    down = RemoteStore(live.url, None, timeout_s=2.0)  # reads need no token
    got = down.lookup(ident(3))
    assert got is not None and got.identity == ident(3) and got.config == record(3).config and got.host == "node-a"
    assert down.lookup(ident(42)) is None
    many = down.lookup_many([ident(i) for i in range(8)])
    assert [many[ident(i)] is not None for i in range(8)] == [True] * 5 + [False] * 3
    assert {r.identity.key for r in down.candidates("softmax_client", "k1", FP)} == {ident(i).key for i in range(5)}
    with live.client() as c:
        misses = c.get("/v1/misses", params={"kernel": "softmax_client"}).json()["items"]
        assert [m["key"] for m in misses] == [ident(99).key]
    down.close()


def test_lookups_are_batched_per_kernel_version(server, monkeypatch):
    """A model's first pass asks tunerd once per kernel version, not once per key: the
    first lookup fetches the kernel's rows; later keys (stored or not) need no request,
    unless the kernel has more rows than one prefetch page."""
    from tuner.store import remote

    up = RemoteStore(server.url, TOKEN, timeout_s=2.0)
    for i in range(6):
        up.save(record(i, kernel="batched"))
        up.save(record(i, kernel="many"))
    assert up.flush(20.0)
    up.close()
    down = RemoteStore(server.url, None, timeout_s=2.0)
    found = [down.lookup(ident(i, "batched")) is not None for i in range(10)]
    assert found == [True] * 6 + [False] * 4
    assert down.counters["requests"] == 1 and down.counters["hits"] == 6 and down.counters["misses"] == 4
    monkeypatch.setattr(remote, "PREFETCH", 4)  # "many" has 6 rows: a partial page
    assert down.lookup(ident(1, "many")) is not None  # on the first page: no second request
    assert down.counters["requests"] == 2
    assert down.lookup(ident(5, "many")) is not None  # past the page: asked for alone
    assert down.lookup(ident(9, "many")) is None
    assert down.counters["requests"] == 4
    monkeypatch.setattr(remote, "PREFETCH_TTL_S", 0.0)  # expired: fetched again
    down.lookup(ident(0, "batched"))
    assert down.counters["requests"] == 5
    down.close()

    # A pretune worker confirms a prefetched miss: a key another machine just stored is seen.
    monkeypatch.setattr(remote, "PREFETCH_TTL_S", 60.0)
    worker = RemoteStore(server.url, None, timeout_s=2.0, confirm_misses=True)
    assert worker.lookup(ident(0, "batched")) is not None and worker.lookup(ident(7, "batched")) is None
    up = RemoteStore(server.url, TOKEN, timeout_s=2.0)
    up.save(record(7, kernel="batched"))
    assert up.flush(20.0)
    up.close()
    assert worker.lookup(ident(7, "batched")) is not None
    worker.close()


def test_layered_store_copies_remote_hits_into_local_db(server, isolated_store, monkeypatch):
    live = server
    from tuner import settings
    from tuner.store import build_default_store
    from tuner.store.sql import SQLStore

    seed = RemoteStore(live.url, TOKEN, timeout_s=2.0)
    seed.save(record(1007, 0.5))
    assert seed.flush(20.0)
    seed.close()

    monkeypatch.setenv("FLAGGEMS_TUNERD_URL", live.url)
    monkeypatch.setenv("FLAGGEMS_TUNERD_TOKEN", TOKEN)
    monkeypatch.setenv("FLAGGEMS_TUNERD_TIMEOUT_MS", "2000")
    settings.reload()
    store = build_default_store()
    assert [type(layer) for layer in store.layers] == [MemoryStore, SQLStore, RemoteStore]
    local = store.layers[1]
    assert local.lookup(ident(1007)) is None
    assert store.lookup(ident(1007)).median_ms == 0.5
    assert local.lookup(ident(1007)).median_ms == 0.5  # kept in the local DB
    assert store.counters["RemoteStore.hits"] == 1
    # A result tuned here is uploaded in the background.
    store.save(record(1008, 0.25))
    remote = store.layers[2]
    assert remote.flush(20.0)
    with live.client() as c:
        assert c.post("/v1/records/lookup", json={"kernel": "softmax_client", "kernel_hash": "k1", "fingerprint": FP.as_dict(),
                                                  "keys": [ident(1008).key]}).json()["missing"] == []
    remote.close()
    local.close()


def test_tunerd_stopped_mid_run_never_blocks(live):
    timeout_s, bound_s = 0.05, 0.5
    store = RemoteStore(live.url, TOKEN, timeout_s=timeout_s, breaker_s=0.5, upload_timeout_s=0.2, upload_attempts=2)
    store.save(record(1))
    assert store.flush(20.0)
    assert store.lookup(ident(1)) is not None

    live.stop()
    assert store.lookup(ident(2)) is None  # a kernel fetched before: answered without tunerd
    worst = 0.0
    for i in range(50):
        t0 = time.perf_counter()
        assert store.lookup(ident(i + 100, kernel=f"unseen_{i}")) is None  # each would need a request
        store.save(record(i + 100))  # queued, never blocks
        store.record_miss(Miss(ident(i + 100)))
        worst = max(worst, time.perf_counter() - t0)
    assert worst < bound_s, worst
    assert store.breaker.is_open and store.counters["skipped"] >= 40  # asked once, then the breaker answered
    t0 = time.perf_counter()
    assert store.candidates("softmax_client", "k1", FP) == []
    assert time.perf_counter() - t0 < bound_s
    # The uploader gives up on a dead tunerd instead of piling up.
    assert store.flush(30.0)
    assert store.counters["dropped_records"] + store.counters["uploaded_records"] >= 50

    # tunerd back: after the breaker period the store answers again.
    live.start()
    time.sleep(0.6)
    store2 = RemoteStore(live.url, TOKEN, timeout_s=2.0)
    assert store2.lookup(ident(1)) is not None
    time.sleep(max(0.0, store.breaker._open_until - time.monotonic()))
    store._client.timeout = store2._client.timeout
    assert store.lookup(ident(1)) is not None
    store.close(flush_timeout_s=0.1)
    store2.close()


def test_hung_tunerd_is_bounded():
    """A server that accepts connections and never answers: the read times out."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        store = RemoteStore(url, TOKEN, timeout_s=0.02, breaker_s=60.0)
        t0 = time.perf_counter()
        assert store.lookup(ident(1)) is None
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(100):
            assert store.lookup(ident(i)) is None
        rest = time.perf_counter() - t0
        assert first < 0.3, first
        assert rest < 0.05, rest  # the breaker is open: no more waiting
        store.close(flush_timeout_s=0.0)
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


def test_uploader_splits_refused_batches_down_to_single_records(tmp_path):
    """Audit: on 413 the uploader dropped the whole batch. A batch refused as too large
    (413) or invalid (422) is now halved down to single records: only the huge record and
    the invalid one are lost."""
    srv = Server(str(tmp_path / "small.db"), tmp_path, env={"TUNERD_MAX_BODY_BYTES": "4096"}).start()
    try:
        store = RemoteStore(srv.url, TOKEN, timeout_s=2.0, upload_timeout_s=5.0)
        huge_timings = [Timing({"BLOCK": 2**i, "num_warps": w}, 1.0 + i) for i in range(12) for w in (1, 2, 4, 8)]
        bad = Record(Identity("softmax_split", "k1", "[" + ",".join(["7"] * 800) + "]", FP), {"BLOCK": 64}, 1.0, 1.0, 1.0, 1)
        # Queued before the uploader thread starts, so they go up as one batch.
        for i in range(30):
            store._queue.put_nowait(("record", record_json(record(i, kernel="softmax_split"))))
            if i == 10:  # alone larger than 4096 bytes: 413
                store._queue.put_nowait(("record", record_json(record(1000, kernel="softmax_split"), huge_timings)))
            if i == 20:  # key too long: 422
                store._queue.put_nowait(("record", record_json(bad)))
        store._ensure_thread()
        assert store.flush(30.0)
        assert store.counters["uploaded_records"] == 30, store.counters
        assert store.counters["rejected_records"] == 2 and store.counters["dropped_records"] == 0
        with srv.client() as c:
            got = c.post("/v1/records/lookup", json={"kernel": "softmax_split", "kernel_hash": "k1",
                                                     "fingerprint": FP.as_dict(),
                                                     "keys": [ident(i).key for i in range(30)] + [ident(1000).key]}).json()
        assert got["missing"] == [ident(1000).key] and len(got["records"]) == 30
        with srv.client() as c:
            metrics = c.get("/metrics").text
        assert 'status="413"' in metrics and 'route="/v1/records",status="422"' in metrics
        # A lookup of a key tunerd cannot hold answers "not found" without failing the batch.
        assert store.lookup_many([bad.identity, ident(1, "softmax_split")])[ident(1, "softmax_split")] is not None
        assert not store.breaker.is_open
        store.close()
    finally:
        srv.stop()
