"""Load test of tunerd's batch lookups (POST /v1/records/lookup), on SQLite and PostgreSQL.

    PYTHONPATH=. python benchmarks/load_tunerd.py                   # both backends, ~1 minute
    PYTHONPATH=. python benchmarks/load_tunerd.py --backends sqlite --seconds 5

For each backend: start tunerd (a uvicorn subprocess on 127.0.0.1, a fresh DB: a temp
SQLite file, or a fresh schema on FLAGGEMS_TEST_PG_URL, dropped afterwards), fill it with
``--records`` tuning records through the API, then let ``--threads`` client threads
(httpx, one connection each) send lookups of ``--keys`` keys (a ``--hit-ratio`` mix of
stored and unknown keys of one kernel version) for ``--seconds``. Prints a markdown table:
keys/s, requests/s and p50/p99 latency per request. Client and server share this machine.
Goal (issue 6): >= 2,000 keys/s with p99 < 20 ms.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import httpx

from tests.pg import PG_BASE_URL, fresh_schema

REPO = Path(__file__).resolve().parents[1]
TOKEN = "load-" + uuid.uuid4().hex
KERNELS = 8
FP = {"vendor": "nvidia", "device_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "sm_count": 132,
      "triton_version": "3.2.0", "torch_version": "2.5.1"}


def key(kernel: int, i: int) -> str:
    # Realistic keys: a GEMM-like (M, N, K, dtypes) tuple, canonical JSON.
    return f'[{(i % 64 + 1) * 16},{4096 + kernel},{i // 64 * 128 + 128},"bfloat16","bfloat16"]'


def kernel_name(k: int) -> str:
    return f"flag_gems.ops.load_{k}._kernel"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tunerd:
    def __init__(self, db: str, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        token_file = tmp / "token"
        token_file.write_text(TOKEN)
        self.log = open(tmp / "tunerd.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunerd.main", "--db", db, "--port", str(self.port), "--token-file", str(token_file),
             "--log-level", "warning"], cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tunerd exited with {self.proc.returncode}; see {tmp / 'tunerd.log'}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("tunerd did not become ready in 60 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def fill(url: str, n: int) -> float:
    """Upsert ``n`` records (spread over KERNELS kernels) in batches of 1000; seconds taken."""
    t0 = time.perf_counter()
    per = -(-n // KERNELS)
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as c:
        batch: list[dict] = []
        for k in range(KERNELS):
            for i in range(per):
                ms = 0.01 + (i % 97) / 1000
                batch.append({"kernel": kernel_name(k), "kernel_hash": "0123456789abcdef", "key": key(k, i),
                              "fingerprint": FP, "config": {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8,
                                                            "num_warps": 8, "num_stages": 3},
                              "median_ms": ms, "p20_ms": ms, "p80_ms": ms, "configs_tried": 24, "source": "pretune",
                              "host": "load"})
                if len(batch) == 1000:
                    c.post("/v1/records", json={"records": batch}).raise_for_status()
                    batch = []
        if batch:
            c.post("/v1/records", json={"records": batch}).raise_for_status()
    return time.perf_counter() - t0


@dataclass
class Load:
    latencies: list[float] = field(default_factory=list)
    keys: int = 0
    hits: int = 0
    errors: int = 0
    wall_s: float = 0.0


def load(url: str, n_records: int, *, threads: int, keys_per_request: int, hit_ratio: float, seconds: float,
         rate_keys_s: float | None = None, warmup_s: float = 1.0) -> Load:
    """Closed loop (each thread sends its next request when the last one answers) or, with
    ``rate_keys_s``, paced: requests go out on a fixed schedule summing to that rate, and a
    request's latency counts from its scheduled time (waiting behind a slow one included)."""
    per = -(-n_records // KERNELS)
    interval = threads * keys_per_request / rate_keys_s if rate_keys_s else 0.0
    out = Load()
    lock = threading.Lock()
    start = threading.Barrier(threads + 1)

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        lat: list[float] = []
        keys = hits = errors = 0
        with httpx.Client(base_url=url, timeout=10) as c:
            start.wait()
            t_begin = time.perf_counter()
            t_measure, t_end = t_begin + warmup_s, t_begin + warmup_s + seconds
            scheduled = t_begin + interval * seed / threads
            while True:
                now = time.perf_counter()
                if now >= t_end:
                    break
                if interval:
                    if scheduled > now:
                        time.sleep(scheduled - now)
                    due, scheduled = scheduled, scheduled + interval
                k = rnd.randrange(KERNELS)
                n_hit = sum(rnd.random() < hit_ratio for _ in range(keys_per_request))
                wanted = [key(k, i) for i in rnd.sample(range(per), n_hit)]
                wanted += [key(k, per + i) for i in rnd.sample(range(10 * per), keys_per_request - n_hit)]
                t0 = due if interval else time.perf_counter()
                r = c.post("/v1/records/lookup", json={"kernel": kernel_name(k), "kernel_hash": "0123456789abcdef",
                                                       "fingerprint": FP, "keys": wanted})
                dt = time.perf_counter() - t0
                if t0 < t_measure:
                    continue
                if r.status_code != 200 or len(r.json()["records"]) != n_hit:
                    errors += 1
                    continue
                lat.append(dt)
                keys += keys_per_request
                hits += n_hit
        with lock:
            out.latencies += lat
            out.keys += keys
            out.hits += hits
            out.errors += errors

    ts = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    start.wait()
    for t in ts:
        t.join()
    out.wall_s = seconds
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--records", type=int, default=20_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--keys", type=int, default=64, help="keys per lookup request")
    p.add_argument("--hit-ratio", type=float, default=0.75)
    p.add_argument("--goal-keys-s", type=float, default=2000.0,
                   help="the paced run's offered load (0: only the closed-loop run)")
    args = p.parse_args()

    rows, notes = [], []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        with tempfile.TemporaryDirectory(prefix="load-tunerd-") as tmp, contextlib.ExitStack() as stack:
            if backend == "sqlite":
                db, label = str(Path(tmp) / "tuning.db"), f"SQLite {sqlite3.sqlite_version} (WAL)"
            elif backend == "postgres":
                try:
                    db, pg_version = stack.enter_context(fresh_schema("load"))
                except Exception as e:  # no server: say so, measure the rest
                    notes.append(f"PostgreSQL skipped: not reachable at {PG_BASE_URL} ({type(e).__name__})")
                    continue
                label = f"PostgreSQL {pg_version}"
            else:
                p.error(f"unknown backend {backend!r}")
            srv = Tunerd(db, Path(tmp))
            try:
                fill_s = fill(srv.url, args.records)
                print(f"{label}: filled {args.records} records in {fill_s:.1f} s", file=sys.stderr)
                runs = [("as fast as it answers", None)]
                if args.goal_keys_s:
                    runs.append((f"paced at {args.goal_keys_s:,.0f} keys/s", args.goal_keys_s))
                for mode, rate in runs:
                    res = load(srv.url, args.records, threads=args.threads, keys_per_request=args.keys,
                               hit_ratio=args.hit_ratio, seconds=args.seconds, rate_keys_s=rate)
                    n = len(res.latencies)
                    rows.append((label, mode, args.keys, res.keys / res.wall_s, n / res.wall_s,
                                 pct(res.latencies, 0.50) * 1e3, pct(res.latencies, 0.99) * 1e3,
                                 statistics.fmean(res.latencies) * 1e3 if n else float("nan"), res.errors))
                    print(f"{label}, {mode}: {n} lookups, {res.errors} errors", file=sys.stderr)
            finally:
                srv.stop()

    print(f"Host: {os.cpu_count()} cores ({platform.machine()}), {platform.system()} {platform.release()}; "
          f"Python {platform.python_version()}, fastapi {version('fastapi')}, uvicorn {version('uvicorn')}, "
          f"pydantic {version('pydantic')}, SQLAlchemy {version('sqlalchemy')}, psycopg {version('psycopg')}, "
          f"httpx {version('httpx')}. {args.records} records over {KERNELS} kernels; {args.keys} keys per request, "
          f"{args.hit_ratio:.0%} hits; {args.threads} client threads (one connection each) for {args.seconds:g} s "
          "per row after 1 s of warm-up; client and server on this machine.")
    print()
    print("| backend | load | keys/request | keys/s | requests/s | p50 ms | p99 ms | mean ms | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, mode, kr, kps, rps, p50, p99, mean, err in rows:
        print(f"| {label} | {mode} | {kr} | {kps:,.0f} | {rps:,.0f} | {p50:.1f} | {p99:.1f} | {mean:.1f} | {err} |")
    for note in notes:
        print(f"\n{note}")
    return 0 if rows and all(r[8] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
