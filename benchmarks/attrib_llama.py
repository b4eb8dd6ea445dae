"""Where plain ``flag_gems.enable()`` loses to eager on the 2-layer Llama-2-7B-shaped model,
op by op, inside the model's own step (issue 8), on the GPU machine.

A microbenchmark of one op in a loop (bench_host_layers.py) puts a pointwise op at about
1.6x torch's host cost, yet a decode step costs about 2x eager's. For each phase this:

- times every flag_gems call of the step (``perf_counter`` around the op's function: the
  dispatcher's entry into Python excluded) and records its arguments;
- replays the recorded aten calls outside the model, through the dispatcher, with
  flag_gems on and with it off (torch): each call alone in a loop, and the whole step's
  sequence of calls in order, again and again.

In context vs alone in a loop shows what the model's surroundings add to an op; the
sequence replay, whether that comes from the ops' own interleaving or from the model's
Python around them; flag_gems vs torch on the same calls, what is left to win per op.

    python benchmarks/attrib_llama.py [--steps 10] [--loops 200] [--top 16]
"""
from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

from bench_llama import _decode_setup, _prefill, build, decode_step  # benchmarks/, the script's own folder
from profile_llama import _median_ms


def _record(flag_gems, registry, fn, steps):
    """Run ``steps`` steps with every op's function timed; return the calls of the last
    step as (overload name, args, kwargs) and each overload's in-context us per call."""
    entries = registry.load_ops()
    totals = defaultdict(lambda: [0.0, 0])
    calls: list = []
    clock = time.perf_counter

    def timed(name, fn_):
        acc = totals[name]

        def call(*args, **kwargs):
            calls.append((name, args, kwargs))
            t0 = clock()
            try:
                return fn_(*args, **kwargs)
            finally:
                acc[0] += clock() - t0
                acc[1] += 1

        return call

    flag_gems.disable()  # enable() rebuilds the wrappers around the timed functions
    originals = {e.name: e.fn for e in entries.values()}
    for e in entries.values():
        e.fn = timed(e.name, e.fn)
    try:
        flag_gems.enable()
        for _ in range(3):
            fn()
        for acc in totals.values():  # the wrappers hold these lists: zero them in place
            acc[:] = [0.0, 0]
        for _ in range(steps):
            calls.clear()
            fn()
        torch.cuda.synchronize()
    finally:
        flag_gems.disable()
        for e in entries.values():
            e.fn = originals[e.name]
    inside = {name: (s / c * 1e6, c / steps) for name, (s, c) in totals.items() if c}
    return list(calls), inside


def _aten(name):
    base, _, overload = name.partition(".")
    return getattr(getattr(torch.ops.aten, base), overload or "default")


def _loop_us(op, args, kwargs, loops):
    for _ in range(5):
        op(*args, **kwargs)
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(loops):
            op(*args, **kwargs)
        best = min(best, (time.perf_counter() - t0) / loops)
        torch.cuda.synchronize()
    return best * 1e6


def _sequence_ms(calls, steps):
    ops = [(_aten(name), args, kwargs) for name, args, kwargs in calls]

    def replay():
        for op, args, kwargs in ops:
            op(*args, **kwargs)

    for _ in range(3):
        replay()
    return _median_ms(replay, steps)


def _phase(flag_gems, registry, phase, fn, args):
    flag_gems.enable()  # tune (or load) every key of the step before anything is timed
    for _ in range(3):
        fn()
    flag_gems.disable()
    eager_ms = _median_ms(fn, args.steps)
    flag_gems.enable()
    step_ms = _median_ms(fn, args.steps)
    flag_gems.disable()
    calls, inside = _record(flag_gems, registry, fn, args.steps)
    first = {}
    for name, a, k in calls:
        first.setdefault(name, (a, k))
    loop = {}
    for mode in ("flag_gems", "torch"):
        if mode == "flag_gems":
            flag_gems.enable()
        for name, (a, k) in first.items():
            loop[mode, name] = _loop_us(_aten(name), a, k, args.loops)
        loop[mode, "sequence"] = _sequence_ms(calls, args.steps)
        flag_gems.disable()
    in_ctx_ms = sum(us * n for us, n in inside.values()) / 1e3
    print(f"\n### plain enable(), {phase}: step {step_ms:.2f} ms, eager {eager_ms:.2f} ms "
          f"({step_ms / eager_ms:.2f}x); {len(calls)} flag_gems calls, {in_ctx_ms:.2f} ms inside them in context; "
          f"the calls replayed in sequence: flag_gems {loop['flag_gems', 'sequence']:.2f} ms, "
          f"torch {loop['torch', 'sequence']:.2f} ms\n")
    print("| aten op | calls/step | flag_gems in context (us, inside) | flag_gems alone in a loop (us) "
          "| torch alone in a loop (us) |")
    print("|---|---|---|---|---|")
    top = sorted(inside, key=lambda n: -inside[n][0] * inside[n][1])[: args.top]
    for name in top:
        us, n = inside[name]
        print(f"| {name} | {n:.0f} | {us:.1f} | {loop['flag_gems', name]:.1f} | {loop['torch', name]:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--loops", type=int, default=200)
    ap.add_argument("--top", type=int, default=16)
    args = ap.parse_args()
    import flag_gems
    from flag_gems import registry

    model = build(2)
    ids = torch.randint(0, 32000, (1, 512), device="cuda")
    decode = decode_step(model, *_decode_setup(model))
    with torch.no_grad():
        for phase, fn in {"decode 8x1": decode, "prefill 1x512": lambda: _prefill(model, ids)}.items():
            _phase(flag_gems, registry, phase, fn, args)


if __name__ == "__main__":
    main()
