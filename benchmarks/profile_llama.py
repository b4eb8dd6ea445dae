"""Where the 2-layer Llama-2-7B-shaped model's time goes (issue 8), on the GPU machine.

For torch eager, plain ``flag_gems.enable()`` and enable() + the transformers patches,
profiles warm prefill (1x512) and decode (8x1 over a 512-token cache) steps with
``torch.profiler`` and prints, per mode and phase: the step's wall time, its GPU kernel
time and kernel count, the kernels with the most GPU time, and the aten ops with the most
host (self CPU) time. Host-bound shows as wall >> GPU time. The wall time is the median
of ``--steps`` unprofiled steps, with Python's garbage collector on and, beside it, off.
``--cprofile`` adds each flag_gems mode's Python functions with the most own time.

    python benchmarks/profile_llama.py [--steps 20] [--top 10] [--cprofile]
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_llama import _decode_setup, _prefill, build, decode_step  # benchmarks/, the script's own folder


def _steps(model, ids, decode_from):
    return {"prefill 1x512": lambda: _prefill(model, ids), "decode 8x1": decode_step(model, *decode_from)}


def _median_ms(fn, steps: int) -> float:
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _cprofile(fn, steps: int, top: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in s.getvalue().splitlines() if ln.strip()]
    print(f"\n```\n{chr(10).join(lines[-top - 1:])}\n```")


def _report(name: str, fn, steps: int, top: int, cprof: bool) -> None:
    for _ in range(3):
        fn()
    wall_ms = _median_ms(fn, steps)
    gc.disable()
    nogc_ms = _median_ms(fn, steps)
    gc.enable()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / steps
    launches = sum(e.count for e in kernels) / steps
    print(f"\n### {name}: wall {wall_ms:.2f} ms/step (median, unprofiled; {nogc_ms:.2f} with gc off), "
          f"GPU kernels {gpu_ms:.2f} ms/step, {launches:.0f} kernels/step\n")
    print("| kernel | per step | GPU us/step |\n|---|---|---|")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"| {e.key[:90]} | {e.count / steps:.0f} | {e.self_device_time_total / steps:.1f} |")
    ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.key.startswith("aten::")]
    print("\n| aten op | per step | host self us/step | host total us/step |\n|---|---|---|---|")
    for e in sorted(ops, key=lambda e: -e.cpu_time_total)[:top]:
        print(f"| {e.key} | {e.count / steps:.0f} | {e.self_cpu_time_total / steps:.0f} | {e.cpu_time_total / steps:.0f} |")
    if cprof:
        _cprofile(fn, steps, top)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--cprofile", action="store_true")
    args = ap.parse_args()
    import flag_gems

    model = build(2)
    ids = torch.randint(0, 32000, (1, 512), device="cuda")
    steps = _steps(model, ids, _decode_setup(model))
    modes = {
        "torch eager": lambda: None,
        "enable()": flag_gems.enable,
        "enable() + patches": flag_gems.apply_gems_patches_to_transformers,
    }
    with torch.no_grad():
        for mode, setup in modes.items():
            setup()
            for phase, fn in steps.items():
                _report(f"{mode}, {phase}", fn, args.steps, args.top, args.cprofile and mode != "torch eager")


if __name__ == "__main__":
    main()
