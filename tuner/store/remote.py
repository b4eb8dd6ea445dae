"""The remote layer of the tuning store: tunerd over HTTP.

Reads are bounded: every request has a short timeout (``FLAGGEMS_TUNERD_TIMEOUT_MS``,
per connect/write/read phase), and after a failure a circuit breaker answers "not found"
at once for ``breaker_s`` seconds, so a kernel call never waits on a tunerd that is down
or slow more than once per breaker period. Reads are batched per kernel version: the first
lookup of a (kernel, kernel hash, environment) fetches that kernel's rows in one request
(up to ``PREFETCH`` of them, kept ``PREFETCH_TTL_S``), so a model's first pass costs one
request per kernel, not one per key; a key past a partial page is asked for alone. Writes (records tuned here, recorded misses)
never block: they go into a bounded queue that a daemon thread uploads in batches; when
the queue is full the newest items are dropped and counted.
"""
from __future__ import annotations

import atexit
import logging
import math
import queue
import threading
import time
import weakref
from collections import Counter
from datetime import datetime
from typing import Any, Iterable, Sequence

import httpx

from tuner.fingerprint import Fingerprint
from tuner.store.base import Identity, Miss, Record, Timing

log = logging.getLogger(__name__)

API = "/v1"
MAX_BATCH = 1000  # the server's default limit of items per request
MAX_TIMINGS = 1024
PREFETCH = 256  # rows per kernel version fetched at its first lookup: one small, quick answer
PREFETCH_TTL_S = 60.0  # then asked again, so keys tuned meanwhile elsewhere are seen
MAX_KEY_CHARS = 1536  # tunerd refuses longer keys (they would not fit its indexes)


class CircuitBreaker:
    """Closed until a failure; then open (calls refused) for ``cooldown_s`` seconds."""

    def __init__(self, cooldown_s: float) -> None:
        self.cooldown_s = cooldown_s
        self._open_until = 0.0

    def allow(self) -> bool:
        return time.monotonic() >= self._open_until

    def trip(self) -> None:
        self._open_until = time.monotonic() + self.cooldown_s

    def reset(self) -> None:
        self._open_until = 0.0

    @property
    def is_open(self) -> bool:
        return not self.allow()


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) and x >= 0 else None


def fingerprint_json(fp: Fingerprint) -> dict[str, Any]:
    return fp.as_dict()


def record_json(rec: Record, timings: Sequence[Timing] = ()) -> dict[str, Any]:
    i = rec.identity
    ts = sorted(timings, key=lambda t: (_finite(t.median_ms) is None, _finite(t.median_ms) or 0.0))[:MAX_TIMINGS]
    body: dict[str, Any] = {
        "kernel": i.kernel, "kernel_hash": i.kernel_hash, "key": i.key, "fingerprint": fingerprint_json(i.fingerprint),
        "config": rec.config, "median_ms": rec.median_ms, "p20_ms": rec.p20_ms, "p80_ms": rec.p80_ms,
        "configs_tried": max(1, rec.configs_tried), "source": rec.source, "host": rec.host[:256],
        "tool_version": rec.tool_version[:64],
        "timings": [
            {"config": t.config, "median_ms": _finite(t.median_ms), "p20_ms": _finite(t.p20_ms),
             "p80_ms": _finite(t.p80_ms), "error": (t.error or None) and t.error[:4096]}
            for t in ts
        ],
    }
    if rec.created_at is not None:
        body["created_at"] = rec.created_at.isoformat()
    return body


def miss_json(miss: Miss) -> dict[str, Any]:
    i = miss.identity
    return {
        "kernel": i.kernel, "kernel_hash": i.kernel_hash, "key": i.key, "fingerprint": fingerprint_json(i.fingerprint),
        "raw_args": miss.raw_args[:4096] if miss.raw_args else None, "count": max(1, min(miss.count, 1_000_000)),
    }


def record_from_json(d: dict[str, Any], ident: Identity | None = None) -> Record:
    if ident is None:
        fp = {k: v for k, v in d["fingerprint"].items() if k != "env_id"}
        ident = Identity(d["kernel"], d["kernel_hash"], d["key"], Fingerprint(**fp))
    created = d.get("created_at")
    return Record(
        identity=ident, config=d["config"], median_ms=d["median_ms"], p20_ms=d["p20_ms"], p80_ms=d["p80_ms"],
        configs_tried=d["configs_tried"], source=d["source"], host=d["host"], tool_version=d["tool_version"],
        created_at=datetime.fromisoformat(created) if created else None,
    )


class RemoteUnavailable(RuntimeError):
    """tunerd did not answer in time, or answered with an error."""


class RemoteStore:
    """A ``TuningStore`` over tunerd; the bottom layer of ``LayeredStore``."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 0.02,
        breaker_s: float = 30.0,
        queue_size: int = 4096,
        upload_timeout_s: float = 5.0,
        upload_attempts: int = 3,
        transport: httpx.BaseTransport | None = None,
        confirm_misses: bool = False,
    ) -> None:
        """``confirm_misses``: a key absent from its kernel's prefetched rows is still asked
        for alone (a pretune worker must see keys other machines tuned a moment ago)."""
        self.url = url.rstrip("/")
        self.confirm_misses = confirm_misses
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(timeout_s), headers=headers,
                                    transport=transport)
        self._upload_client = httpx.Client(base_url=self.url, timeout=httpx.Timeout(upload_timeout_s),
                                           headers=headers, transport=transport)
        self.breaker = CircuitBreaker(breaker_s)
        self.upload_attempts = upload_attempts
        self.counters: Counter[str] = Counter()
        # (kernel, kernel_hash, env_id) -> (fetched at, {key: record}, whether that is all of them)
        self._prefetched: dict[tuple[str, str, str], tuple[float, dict[str, Record], bool]] = {}
        self._queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        self._stop = threading.Event()
        ref = weakref.ref(self)
        atexit.register(lambda: (s := ref()) is not None and s.close(flush_timeout_s=1.0))

    # -- requests ------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any) -> Any:
        """One bounded call; any failure trips the breaker and raises ``RemoteUnavailable``."""
        if not self.breaker.allow():
            self.counters["skipped"] += 1
            raise RemoteUnavailable("circuit open")
        self.counters["requests"] += 1
        try:
            r = self._client.request(method, API + path, **kw)
        except httpx.HTTPError as e:
            self._fail(f"{type(e).__name__}: {e}")
            raise RemoteUnavailable(str(e)) from e
        if r.status_code != 200:
            self._fail(f"HTTP {r.status_code}: {r.text[:200]}")
            raise RemoteUnavailable(f"HTTP {r.status_code}")
        return r.json()

    def _fail(self, why: str) -> None:
        self.counters["errors"] += 1
        if not self.breaker.is_open:
            log.warning("tunerd at %s unavailable (%s); not asking again for %.0f s", self.url, why,
                        self.breaker.cooldown_s)
        self.breaker.trip()

    # -- reads ---------------------------------------------------------------------------
    def lookup(self, ident: Identity) -> Record | None:
        known = self._kernel_rows(ident.kernel, ident.kernel_hash, ident.fingerprint)
        if known is not None:
            rows, complete = known
            if ident.key in rows or (complete and not self.confirm_misses):
                rec = rows.get(ident.key)
                self.counters["hits" if rec is not None else "misses"] += 1
                return rec
        return self.lookup_many([ident]).get(ident)

    def _kernel_rows(self, kernel: str, kernel_hash: str, fp: Fingerprint) -> tuple[dict[str, Record], bool] | None:
        """The prefetched rows of one kernel version (fetched now if absent or expired);
        None when tunerd cannot answer."""
        group = (kernel, kernel_hash, fp.env_id)
        hit = self._prefetched.get(group)
        now = time.monotonic()
        if hit is not None and now - hit[0] < PREFETCH_TTL_S:
            return hit[1], hit[2]
        try:
            data = self._request("GET", "/records", params={
                "kernel": kernel, "kernel_hash": kernel_hash, "env_id": fp.env_id, "limit": PREFETCH,
            })
        except RemoteUnavailable:
            return None
        rows = {d["key"]: record_from_json(d, Identity(kernel, kernel_hash, d["key"], fp)) for d in data["items"]}
        self._prefetched[group] = (now, rows, data.get("next_after") is None)
        return rows, data.get("next_after") is None

    def lookup_many(self, idents: Iterable[Identity]) -> dict[Identity, Record | None]:
        """Every key of one kernel version and environment in one request (per 1000 keys)."""
        groups: dict[tuple[str, str, Fingerprint], dict[str, Identity]] = {}
        for i in idents:
            groups.setdefault((i.kernel, i.kernel_hash, i.fingerprint), {})[i.key] = i
        out: dict[Identity, Record | None] = {}
        for (kernel, khash, fp), by_key in groups.items():
            for k in [k for k in by_key if len(k) > MAX_KEY_CHARS]:
                out[by_key.pop(k)] = None  # tunerd cannot hold it; asking would fail the whole batch
            keys = list(by_key)
            for start in range(0, len(keys), MAX_BATCH):
                chunk = keys[start:start + MAX_BATCH]
                for k in chunk:
                    out[by_key[k]] = None
                try:
                    data = self._request("POST", "/records/lookup", json={
                        "kernel": kernel, "kernel_hash": khash, "fingerprint": fingerprint_json(fp), "keys": chunk,
                    })
                except RemoteUnavailable:
                    continue
                for d in data["records"]:
                    if d["key"] in by_key:
                        out[by_key[d["key"]]] = record_from_json(d, by_key[d["key"]])
        found = sum(r is not None for r in out.values())
        self.counters["hits"] += found
        self.counters["misses"] += len(out) - found
        return out

    def candidates(self, kernel: str, kernel_hash: str, fingerprint: Fingerprint) -> list[Record]:
        """The first page (up to 1000) of records of one kernel version and environment."""
        try:
            data = self._request("GET", "/records", params={
                "kernel": kernel, "kernel_hash": kernel_hash, "env_id": fingerprint.env_id, "limit": MAX_BATCH,
            })
        except RemoteUnavailable:
            return []
        return [record_from_json(d, Identity(kernel, kernel_hash, d["key"], fingerprint)) for d in data["items"]]

    # -- writes (background) -------------------------------------------------------------
    def save(self, record: Record, timings: Sequence[Timing] = ()) -> None:
        self._enqueue("record", record_json(record, timings))

    def record_miss(self, miss: Miss) -> None:
        self._enqueue("miss", miss_json(miss))

    def _enqueue(self, kind: str, item: dict[str, Any]) -> None:
        self._ensure_thread()
        try:
            self._queue.put_nowait((kind, item))
            self.counters["queued"] += 1
        except queue.Full:
            self.counters["dropped"] += 1

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._thread_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._upload_loop, name="tunerd-upload", daemon=True)
                self._thread.start()

    def _upload_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                records = [item for kind, item in batch if kind == "record"]
                misses = [item for kind, item in batch if kind == "miss"]
                if records:
                    self._upload("", "records", records)
                if misses:
                    self._upload("/misses", "misses", misses)
            except Exception:  # the uploader must survive anything
                log.exception("tunerd upload failed")
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _upload(self, path: str, field: str, items: list[dict[str, Any]]) -> None:
        url = API + ("/records" if field == "records" else path)
        for attempt in range(self.upload_attempts):
            if attempt:
                # Wait for the breaker (a tunerd restart), but not past a stop request.
                while self.breaker.is_open and not self._stop.wait(0.05):
                    pass
            try:
                r = self._upload_client.post(url, json={field: items})
            except httpx.HTTPError as e:
                self._fail(f"upload: {type(e).__name__}: {e}")
                continue
            if r.status_code == 200:
                self.counters[f"uploaded_{field}"] += len(items)
                self.breaker.reset()
                return
            if r.status_code in (413, 422) and len(items) > 1:
                # Too large or holding an invalid item: halve down to single items, so one
                # bad or huge item is the only one lost (log2(n) extra requests per bad item).
                half = len(items) // 2
                self._upload(path, field, items[:half])
                self._upload(path, field, items[half:])
                return
            if 400 <= r.status_code < 500:
                self.counters[f"rejected_{field}"] += len(items)
                log.warning("tunerd rejected %d %s: HTTP %d %s", len(items), field, r.status_code, r.text[:300])
                return
            self._fail(f"upload: HTTP {r.status_code}")
        self.counters[f"dropped_{field}"] += len(items)
        log.warning("dropped %d %s after %d failed uploads to %s", len(items), field, self.upload_attempts, self.url)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued item was uploaded (or given up on); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, flush_timeout_s: float = 1.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.flush(flush_timeout_s)
            self._stop.set()
            self._thread.join(timeout=1.0)
        self._client.close()
        self._upload_client.close()
