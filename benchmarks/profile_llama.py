"""Where the 2-layer Llama-2-7B-shaped model's time goes (issue 8), on the GPU machine.

For torch eager, plain ``flag_gems.enable()`` and enable() + the transformers patches,
profiles warm prefill (1x512) and decode (8x1 over a 512-token cache) steps with
``torch.profiler`` and prints, per mode and phase: the step's wall time, its GPU kernel
time and kernel count, the kernels with the most GPU time, and the aten ops with the most
host (self CPU) time. Host-bound shows as wall >> GPU time.

    python benchmarks/profile_llama.py [--steps 5] [--top 10]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from bench_llama import _decode_setup, _prefill, build  # benchmarks/, the script's own folder


def _steps(model, ids, decode_from):
    cache, tok = decode_from

    def decode():
        extra = cache.get_seq_length() - 512
        if extra > 0:
            cache.crop(-extra)
        return model(input_ids=tok, past_key_values=cache, use_cache=True)

    return {"prefill 1x512": lambda: _prefill(model, ids), "decode 8x1": decode}


def _report(name: str, fn, steps: int, top: int) -> None:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) / steps * 1e3
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_ms = sum(e.self_device_time_total for e in kernels) / 1e3 / steps
    launches = sum(e.count for e in kernels) / steps
    print(f"\n### {name}: wall {wall_ms:.2f} ms/step (unprofiled), GPU kernels {gpu_ms:.2f} ms/step, {launches:.0f} kernels/step\n")
    print("| kernel | per step | GPU us/step |\n|---|---|---|")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"| {e.key[:90]} | {e.count / steps:.0f} | {e.self_device_time_total / steps:.1f} |")
    ops = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU and e.key.startswith("aten::")]
    print("\n| aten op | per step | host self us/step | host total us/step |\n|---|---|---|---|")
    for e in sorted(ops, key=lambda e: -e.cpu_time_total)[:top]:
        print(f"| {e.key} | {e.count / steps:.0f} | {e.self_cpu_time_total / steps:.0f} | {e.cpu_time_total / steps:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=10)
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
                _report(f"{mode}, {phase}", fn, args.steps, args.top)


if __name__ == "__main__":
    main()
