"""Host microseconds per call of a GPU op, shared by the benchmarks that time launch paths."""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from typing import Callable, ContextManager, Iterator

import torch


@contextmanager
def gems_only() -> Iterator[None]:
    """``flag_gems.use_gems()`` for a block, then ``disable()``: the wrappers removed, not
    only switched off. A switched-off wrapper still routes its op through Python (about 2
    us a call), which torch's timings after the block would otherwise carry. The next
    block installs them again (milliseconds, outside any timed loop)."""
    import flag_gems

    with flag_gems.use_gems():
        yield
    flag_gems.disable()


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


def host_us_interleaved(cases: dict[str, tuple[Callable[[], object], Callable[[], ContextManager] | None]],
                        n: int = 2000, rounds: int = 15) -> dict[str, float]:
    """Host us per call of each case, its best loop of ``n`` calls over ``rounds`` rounds
    that run every case in turn. A noisy host slows whole stretches of time; interleaving
    spreads them over every case, so the ratios between cases hold. A case is
    ``(fn, context)``: ``context()`` (flag_gems' side: ``gems_only``) is entered around
    each of its loops, or None."""
    best = dict.fromkeys(cases, float("inf"))
    for fn, ctx in cases.values():  # warm-up: compile, tune, fill caches
        with ctx() if ctx else nullcontext():
            for _ in range(100):
                fn()
    torch.cuda.synchronize()
    for _ in range(rounds):
        for name, (fn, ctx) in cases.items():
            with ctx() if ctx else nullcontext():
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                dt = time.perf_counter() - t0
            torch.cuda.synchronize()
            best[name] = min(best[name], dt / n * 1e6)
    return best
