"""Host microseconds per call of a GPU op, shared by the benchmarks that time launch paths."""
from __future__ import annotations

import time
from typing import Callable

import torch


def host_us(fn: Callable[[], object], n: int, warmup: int = 100, repeats: int = 5) -> float:
    """Best of ``repeats`` loops of ``n`` calls, in us per call. The queue is drained
    between loops: a full queue would make the host wait on the GPU, timing the GPU."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - t0)
        torch.cuda.synchronize()
    return best / n * 1e6
