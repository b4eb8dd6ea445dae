"""Timing one config of a kernel. On a GPU: ``triton.testing.do_bench`` (median, p20 and
p80 with an L2 flush between runs). Under the Triton interpreter: wall-clock time, so the
whole tuning flow runs on CPU. Tests inject a deterministic timer with ``set_timer``."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

from tuner import settings


@dataclass(frozen=True)
class BenchRequest:
    fn: Callable[[], object]  # one launch of the kernel with this config
    kernel: str
    config: dict
    key: tuple
    warmup: int  # ms (GPU) of warm-up
    rep: int  # ms (GPU) of timed repetitions


Timing3 = tuple[float, float, float]  # median, p20, p80 in ms
Timer = Callable[[BenchRequest], Timing3]


def gpu_timer(req: BenchRequest) -> Timing3:
    import triton.testing

    med, p20, p80 = triton.testing.do_bench(req.fn, warmup=req.warmup, rep=req.rep, quantiles=[0.5, 0.2, 0.8])
    return float(med), float(p20), float(p80)


def wall_timer(req: BenchRequest, reps: int = 5) -> Timing3:
    """Interpreter timing: one warm-up run, then a few timed runs; median and the 20th and
    80th percentiles (interpolated, as ``do_bench`` reports them) of the runs."""
    req.fn()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        req.fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    p20, _, _, p80 = statistics.quantiles(samples, n=5, method="inclusive")
    return statistics.median(samples), p20, p80


_timer: Timer | None = None


def set_timer(timer: Timer | None) -> None:
    """Use ``timer`` for every benchmark (``None``: back to the device's own)."""
    global _timer
    _timer = timer


def get_timer() -> Timer:
    if _timer is not None:
        return _timer
    return wall_timer if settings.get().interpret else gpu_timer
