"""Host (Python) overhead per call of flag_gems ops, without the kernel launch.

Runs on CPU: the Triton interpreter's launch (``InterpretedFunction.run``) is replaced by
a no-op after a warm-up call, so what is timed is flag_gems' own Python (plus the torch
dispatcher and the allocation of the output).

``--kept``: instead, every ``tuner.launch`` launcher behaves as on a GPU (kept compiled
kernels, direct launches) with stand-in compiled kernels whose launch does nothing: the
GPU host path minus Triton's own runner.

    PYTHONPATH=. python benchmarks/bench_host_overhead.py [--n 5000] [--kept]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("FLAGGEMS_AUTOTUNE", "never")

import torch  # noqa: E402

import flag_gems  # noqa: E402


def per_call_us(f, n: int) -> float:
    for _ in range(200):
        f()
    best = float("inf")
    for _ in range(15):  # best of 15: the machine is shared
        t = time.thread_time()  # CPU time of this thread: other processes' load counts less
        for _ in range(n):
            f()
        best = min(best, (time.thread_time() - t) / n * 1e6)
    return best


def _stand_in_launches() -> None:
    """Every launcher fast, on compiled kernels whose launch does nothing."""
    from tuner import launch

    class Compiled:
        def __getitem__(self, grid):
            return lambda *args, stream=None: None

    class Jit:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: Compiled()

    init = launch.Launcher.__init__

    def fast_init(lc, fn):
        init(lc, fn)
        lc.capable = lc.fast = True
        lc.fn, lc.current_device, lc.current_stream = Jit(), (lambda: 0), (lambda device: 0)

    launch.Launcher.__init__ = fast_init


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--kept", action="store_true")
    opts = ap.parse_args()
    n = opts.n
    if opts.kept:
        _stand_in_launches()
    x, y = torch.randn(16, dtype=torch.bfloat16), torch.randn(16, dtype=torch.bfloat16)
    c = torch.rand(16) > 0.5
    xt = torch.randn(4, 8).t()
    a, w = torch.randn(8, 64, dtype=torch.bfloat16), torch.randn(64, 64, dtype=torch.bfloat16)
    ids = torch.randint(0, 64, (8, 1))
    cache, new = torch.randn(8, 32, 64, 128, dtype=torch.bfloat16), torch.randn(8, 32, 1, 128, dtype=torch.bfloat16)
    cases = {
        "add": lambda: torch.add(x, y),
        "mul scalar": lambda: x * 2.0,
        "exp": lambda: torch.exp(x),
        "where": lambda: torch.where(c, x, y),
        "to(float32)": lambda: x.to(torch.float32),
        "add alpha": lambda: torch.add(x, y, alpha=2),
        "add bcast": lambda: x + y[:1],
        "add noncontig": lambda: xt + xt,
        "add_ inplace": lambda: x.add_(y),
        "add out=": lambda: torch.add(x, y, out=x),
        "linear 8x64x64": lambda: torch.nn.functional.linear(a, w),
        "rms_norm": lambda: torch.nn.functional.rms_norm(a, (64,), w[0], 1e-6),
        "softmax": lambda: torch.softmax(a, -1),
        "mean -1": lambda: a.mean(-1),
        "embedding": lambda: torch.nn.functional.embedding(ids, w),
        "cat kv": lambda: torch.cat([cache, new], dim=-2),
    }
    from triton.runtime.interpreter import InterpretedFunction

    flag_gems.enable()
    for f in cases.values():
        f()
    if not opts.kept:
        InterpretedFunction.run = lambda self, *a, **k: None
    for name, f in cases.items():
        print(f"{name:14s} {per_call_us(f, n):6.1f} us")
    flag_gems.disable()
    aten = {name: per_call_us(f, n) for name, f in cases.items()}
    print("torch (aten on CPU, for reference): " + ", ".join(f"{k} {v:.1f}" for k, v in aten.items()))


if __name__ == "__main__":
    main()
