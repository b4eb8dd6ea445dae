"""Prometheus metrics in the text exposition format (0.0.4), written here so tunerd needs
no extra dependency: request counts and latencies per route, lookup hits and misses,
stored rows (counted at scrape time)."""
from __future__ import annotations

import bisect
import threading
from collections import defaultdict

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{_esc(str(v))}"' for k, v in kv.items()) + "}"


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # method, route, status
        self.latency_buckets: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0] * len(BUCKETS))
        self.latency_sum: dict[tuple[str, str], float] = defaultdict(float)
        self.latency_count: dict[tuple[str, str], int] = defaultdict(int)
        self.lookup_hits = 0
        self.lookup_misses = 0
        self.records_upserted = 0
        self.misses_recorded = 0

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, str(status))] += 1
            key = (method, route)
            i = bisect.bisect_left(BUCKETS, seconds)
            if i < len(BUCKETS):
                self.latency_buckets[key][i] += 1
            self.latency_sum[key] += seconds
            self.latency_count[key] += 1

    def lookups(self, hits: int, misses: int) -> None:
        with self._lock:
            self.lookup_hits += hits
            self.lookup_misses += misses

    def add(self, name: str, n: int) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def render(self, rows: dict[str, int] | None) -> str:
        out: list[str] = []
        with self._lock:
            out += ["# HELP tunerd_requests_total HTTP requests by method, route and status.",
                    "# TYPE tunerd_requests_total counter"]
            for (m, r, s), n in sorted(self.requests.items()):
                out.append(f"tunerd_requests_total{_labels(method=m, route=r, status=s)} {n}")
            out += ["# HELP tunerd_request_duration_seconds HTTP request latency.",
                    "# TYPE tunerd_request_duration_seconds histogram"]
            for (m, r), counts in sorted(self.latency_buckets.items()):
                cum = 0
                for le, c in zip(BUCKETS, counts):
                    cum += c
                    out.append(f"tunerd_request_duration_seconds_bucket{_labels(method=m, route=r, le=repr(le))} {cum}")
                out.append(f'tunerd_request_duration_seconds_bucket{_labels(method=m, route=r, le="+Inf")} {self.latency_count[(m, r)]}')
                out.append(f"tunerd_request_duration_seconds_sum{_labels(method=m, route=r)} {self.latency_sum[(m, r)]}")
                out.append(f"tunerd_request_duration_seconds_count{_labels(method=m, route=r)} {self.latency_count[(m, r)]}")
            for name, help_, value in (
                ("tunerd_lookup_hits_total", "Looked-up keys found.", self.lookup_hits),
                ("tunerd_lookup_misses_total", "Looked-up keys not found.", self.lookup_misses),
                ("tunerd_records_upserted_total", "Records received for upsert.", self.records_upserted),
                ("tunerd_misses_recorded_total", "Misses received.", self.misses_recorded),
            ):
                out += [f"# HELP {name} {help_}", f"# TYPE {name} counter", f"{name} {value}"]
        if rows is not None:
            out += ["# HELP tunerd_rows Rows stored per table.", "# TYPE tunerd_rows gauge"]
            for table, n in sorted(rows.items()):
                out.append(f"tunerd_rows{_labels(table=table)} {n}")
        return "\n".join(out) + "\n"
