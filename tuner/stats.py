"""Process-wide tuner counters. Only the miss path counts: a hit on the hot path
touches no counter."""
from __future__ import annotations

from collections import Counter

# store_errors: failures of any store layer, counted by ``LayeredStore`` (which skips them);
# capture_fallbacks: misses met while a CUDA graph was being captured (not tuned then)
COUNTERS = ("hits", "misses", "benchmarks_run", "configs_timed", "fallbacks", "capture_fallbacks", "store_reads",
            "store_writes", "store_errors")

_counts: Counter[str] = Counter()


def bump(name: str, n: int = 1) -> None:
    _counts[name] += n


def stats() -> dict[str, int]:
    """Counters since start (or ``reset_stats``): hits, misses, benchmarks_run, ..."""
    return {name: _counts[name] for name in COUNTERS} | {k: v for k, v in _counts.items() if k not in COUNTERS}


def reset_stats() -> None:
    _counts.clear()
