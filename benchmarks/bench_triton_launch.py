"""What Triton's launch of an already-compiled kernel costs on the host, layer by layer.

flag_gems relaunches kept kernels through ``compiled[grid](*args, stream=...)``, Triton's
public way to launch a ``CompiledKernel``. This times that runner beside the layers under
it, on one GPU, every case in turn round after round (best loop of each):

- the runner with tensor arguments (what flag_gems passes) and with their addresses as
  ints (Triton's launcher then skips ``data_ptr()`` and its ``cuPointerGetAttribute``
  check per pointer, the check that turns a CPU tensor into a clear error);
- ``compiled.run(...)``, the launcher object the runner calls, with no launch metadata
  and no hooks: what the runner's own Python (``launch_metadata``, the hook knobs) adds.
  This reaches into Triton's internals for the measurement only; flag_gems never does;
- the runner with the public hook knobs (``knobs.runtime.launch_enter_hook`` / ``_exit_``)
  set to None around its loop: what Triton's empty ``HookChain`` defaults cost per launch
  (flag_gems leaves the knobs alone: a None knob breaks ``.add``, how proton attaches);
- torch's own add, an ``empty_like``, a ``data_ptr()``, the current-stream query and
  ``torch.cuda.current_device()`` (which tuner.launch skips in a one-device process).

    PYTHONPATH=.:benchmarks python benchmarks/bench_triton_launch.py
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import triton
import triton.language as tl

from _host_timing import host_us_interleaved  # benchmarks/, the script's own folder


@triton.jit
def _add3(x, y, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out + offs, tl.load(x + offs, mask=m) + tl.load(y + offs, mask=m), mask=m)


@triton.jit
def _add5(a, b, c, d, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    s = tl.load(a + offs, mask=m) + tl.load(b + offs, mask=m) + tl.load(c + offs, mask=m) + tl.load(d + offs, mask=m)
    tl.store(out + offs, s, mask=m)


@contextmanager
def _hooks_none() -> Iterator[None]:
    """Triton's launch hook knobs set to None (the pre-HookChain "no hook"), then restored."""
    from triton import knobs

    rt = knobs.runtime
    enter, leave = rt.launch_enter_hook, rt.launch_exit_hook
    rt.launch_enter_hook = rt.launch_exit_hook = None
    try:
        yield
    finally:
        rt.launch_enter_hook, rt.launch_exit_hook = enter, leave


def main() -> None:
    from triton.runtime import driver

    x, y = torch.randn(16, device="cuda", dtype=torch.bfloat16), torch.randn(16, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(x)
    k3 = _add3[(1,)](x, y, out, 16, BLOCK=1024)  # compiles; returns the CompiledKernel
    k5 = _add5[(1,)](x, y, x, y, out, 16, BLOCK=1024)
    dev = driver.active.get_current_device()
    get_stream = driver.active.get_current_stream
    s = get_stream(dev)
    run3, run5 = k3[(1, 1, 1)], k5[(1, 1, 1)]
    px, py, po = x.data_ptr(), y.data_ptr(), out.data_ptr()
    out.zero_()
    run3(px, py, po, 16, 1024, stream=s)
    torch.cuda.synchronize()
    print(f"ints as pointers give the same result: {torch.equal(out, x + y)}")
    launcher, fn, packed = k3.run, k3.function, k3.packed_metadata
    cases = {
        "runner, tensors (3 pointers)": lambda: run3(x, y, out, 16, 1024, stream=s),
        "runner, ints (3 pointers)": lambda: run3(px, py, po, 16, 1024, stream=s),
        "runner, tensors (5 pointers)": lambda: run5(x, y, x, y, out, 16, 1024, stream=s),
        "runner, ints (5 pointers)": lambda: run5(px, py, px, py, po, 16, 1024, stream=s),
        "compiled.run, no metadata or hooks, tensors": lambda: launcher(1, 1, 1, s, fn, packed, None, None, None, x, y, out, 16, 1024),
        "compiled.run, no metadata or hooks, ints": lambda: launcher(1, 1, 1, s, fn, packed, None, None, None, px, py, po, 16, 1024),
        "torch.add": lambda: torch.add(x, y),
        "torch.add, out=": lambda: torch.add(x, y, out=out),
        "empty_like": lambda: torch.empty_like(x),
        "data_ptr()": lambda: x.data_ptr(),
        "current stream (Triton's driver)": lambda: get_stream(dev),
        "torch.cuda.current_device()": torch.cuda.current_device,
    }
    timed = {name: (f, None) for name, f in cases.items()}
    timed["runner, tensors (3 pointers), hook knobs None"] = (cases["runner, tensors (3 pointers)"], _hooks_none)
    best = host_us_interleaved(timed, n=3000, rounds=12)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, Triton {triton.__version__}\n")
    print("| case | host us per call |\n|---|---|")
    for name, us in best.items():
        print(f"| {name} | {us:.2f} |")


if __name__ == "__main__":
    main()
