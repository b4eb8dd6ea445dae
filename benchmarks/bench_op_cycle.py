"""Host us per small op: each op alone in a loop, against the same ten ops called in turn.

A model calls many different ops one after the other. On the GPU host, flag_gems' ops cost
more per call there than in a loop of one op, more than torch's do; this measures that
gap without a model. Ten 4x64 bf16 ops (add, mul by a scalar and by a broadcast weight,
silu, a cast, softmax, sum, mean, rsqrt, a linear), torch's side with flag_gems' wrappers
removed.

``--stand-in``: on CPU, flag_gems' side only, every Triton launch replaced by a stand-in
that does nothing (``bench_host_overhead.py --kept``): what the cycle costs flag_gems'
own Python, the dispatch and the allocations, without Triton's runner or the driver.

    PYTHONPATH=.:benchmarks python benchmarks/bench_op_cycle.py [--stand-in] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from typing import Callable

STAND_IN = "--stand-in" in sys.argv
if STAND_IN:
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("FLAGGEMS_AUTOTUNE", "never")
os.environ.setdefault("FLAGGEMS_CACHE_DIR", tempfile.mkdtemp(prefix="gems-bench-"))

import torch  # noqa: E402

import flag_gems  # noqa: E402
from _host_timing import gems_only  # noqa: E402  (benchmarks/, the script's own folder)


def _ops(device: str) -> list[Callable[[], object]]:
    bf16 = torch.bfloat16
    x, w = torch.randn(4, 64, device=device, dtype=bf16), torch.randn(64, device=device, dtype=bf16)
    t = torch.randn(64, 64, device=device, dtype=bf16)
    F = torch.nn.functional
    return [lambda: x + x, lambda: x * 2.0, lambda: x * w, lambda: F.silu(x), lambda: x.to(torch.float32),
            lambda: torch.softmax(x, -1), lambda: x.sum(), lambda: x.mean(-1), lambda: torch.rsqrt(x),
            lambda: F.linear(x, t)]


def per_op_us(fns: list[Callable[[], object]], sync: Callable[[], None], n: int = 1000) -> float:
    """Best of 7 loops of ``n`` passes over ``fns``, in us per op call."""
    for _ in range(50):
        for f in fns:
            f()
    sync()
    best = float("inf")
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            for f in fns:
                f()
        best = min(best, time.perf_counter() - t0)
        sync()
    return best / n / len(fns) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--stand-in", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    opts = ap.parse_args()
    if opts.stand_in:
        from bench_host_overhead import _stand_in_launches

        _stand_in_launches()
        sides, device, sync = {"flag_gems (stand-in launches)": gems_only}, "cpu", lambda: None
    else:
        sides, device, sync = {"torch": nullcontext, "flag_gems": gems_only}, "cuda", torch.cuda.synchronize
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {__import__('triton').__version__}")
    ops = _ops(device)
    print("| side | round | alone, us/op | in turn, us/op | difference |\n|---|---|---|---|---|")
    with torch.no_grad():
        for r in range(opts.rounds):
            for side, ctx in sides.items():
                with ctx():
                    alone = sum(per_op_us([f], sync) for f in ops) / len(ops)
                    cycle = per_op_us(ops, sync)
                print(f"| {side} | {r + 1} | {alone:.2f} | {cycle:.2f} | {cycle - alone:+.2f} |")
    flag_gems.disable()


if __name__ == "__main__":
    main()
