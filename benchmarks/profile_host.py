"""Where the host time of a flag_gems op goes, on the GPU machine.

For a few ops at decode size (where every op is host-bound), prints the host
microseconds per call with torch and under ``flag_gems.enable()`` (each kernel launched
through Triton's ``fn[grid](...)``, and through tuner.launch's kept compiled kernels, the
default), then a cProfile of
the flag_gems calls (top functions by own time), so the launch path's cost is split into
dispatch, flag_gems' Python, and Triton's launcher.

    python benchmarks/profile_host.py [--n 2000] [--top 14]
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import torch
import torch.nn.functional as F
from _host_timing import host_us  # benchmarks/, the script's own folder


def cases() -> dict:
    d = dict(device="cuda", dtype=torch.bfloat16)
    x, y = torch.randn(8, 4096, **d), torch.randn(8, 4096, **d)
    w = torch.randn(4096, 4096, **d)
    x3 = torch.randn(8, 1, 4096, **d)
    rw = torch.randn(4096, **d)
    kv = torch.randn(8, 32, 64, 128, **d)
    kv1 = torch.randn(8, 32, 1, 128, **d)
    ids = torch.randint(0, 4096, (8,), device="cuda")
    return {
        "add": lambda: x + y,
        "mul scalar": lambda: x * 2.0,
        "silu": lambda: F.silu(x),
        "to fp32": lambda: x.to(torch.float32),
        "mean dim -1": lambda: x.mean(-1, keepdim=True),
        "rms_norm": lambda: F.rms_norm(x, (4096,), rw, 1e-6),
        "cat (KV append)": lambda: torch.cat([kv, kv1], dim=2),
        "embedding": lambda: F.embedding(ids, w),
        "mm 8x4096x4096": lambda: torch.mm(x, w.t()),
        "F.linear 3-D": lambda: F.linear(x3, w),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--top", type=int, default=14)
    args = ap.parse_args()
    import flag_gems
    from tuner import launch

    ops = cases()
    torch_us = {k: host_us(f, args.n, warmup=50) for k, f in ops.items()}
    flag_gems.enable()
    launch.set_enabled(False)
    triton_us = {k: host_us(f, args.n, warmup=50) for k, f in ops.items()}
    launch.set_enabled(True)
    gems_us = {k: host_us(f, args.n, warmup=50) for k, f in ops.items()}
    print("| op (bf16, decode size) | torch host us | flag_gems, Triton's launch | flag_gems, kept kernels | difference to torch |")
    print("|---|---|---|---|---|")
    for k in ops:
        print(f"| {k} | {torch_us[k]:.1f} | {triton_us[k]:.1f} | {gems_us[k]:.1f} | {gems_us[k] - torch_us[k]:+.1f} |")
    for name in ("add", "F.linear 3-D"):
        prof = cProfile.Profile()
        f = ops[name]
        prof.enable()
        for _ in range(args.n):
            f()
        prof.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(args.top)
        print(f"\n### cProfile, {args.n} calls of {name} under enable()\n")
        print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[-4000:])


if __name__ == "__main__":
    main()
