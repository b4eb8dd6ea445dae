"""Where the host time of one small flag_gems op goes, layer by layer, on the GPU.

Times ``torch.add`` of two 16-element bf16 tensors, then each layer below it alone (every
case in turn, round after round, best loop of each: a noisy host shifts them alike): the
op through aten dispatch (flag_gems on), the ``Pointwise`` object called directly, the
LibTuner call, the kept compiled kernel, the compiled kernel launched by hand, and the
pieces every path pays (the output allocation, by ``empty_like`` and by ``empty`` with the
size positional or by keyword, the current stream, aten's dispatch into a trivial Python
kernel, torch's own op with flag_gems' wrappers switched off), and the issue's reference
point: a naive Python-registered Triton op (``kernel[grid](...)`` per call). Then a
table of small ops end to end, torch beside flag_gems (``--inference-mode``: that table
under ``torch.inference_mode``, which skips the Autograd keys).

    PYTHONPATH=.:benchmarks python benchmarks/bench_host_layers.py [--ops] [--inference-mode]
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile

os.environ.setdefault("FLAGGEMS_CACHE_DIR", tempfile.mkdtemp(prefix="gems-bench-"))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import flag_gems  # noqa: E402
from _host_timing import gems_only, host_us_interleaved  # noqa: E402  (benchmarks/, the script's own folder)

BF16 = torch.bfloat16


@triton.jit
def _naive_add_kernel(x, y, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(out + offs, tl.load(x + offs, mask=m) + tl.load(y + offs, mask=m), mask=m)


def _naive_add(a: torch.Tensor, b: torch.Tensor, alpha: float = 1) -> torch.Tensor:
    """A Triton op as a first version writes it: allocate, launch through ``kernel[grid]``."""
    out = torch.empty_like(a)
    n = a.numel()
    _naive_add_kernel[(triton.cdiv(n, 1024),)](a, b, out, n, BLOCK=1024)
    return out


@contextlib.contextmanager
def _switched_off():
    """flag_gems' wrappers installed and switched off, as after a ``use_gems()`` block."""
    with flag_gems.use_gems():
        pass
    yield
    flag_gems.disable()


def layers() -> dict[str, float]:
    from flag_gems.ops.binary import ADD

    x, y = torch.randn(16, device="cuda", dtype=BF16), torch.randn(16, device="cuda", dtype=BF16)
    out = torch.empty_like(x)
    gems = gems_only
    ADD(x, y)  # compiles and tunes the kernel below, keeps it
    kernel = ADD.kernel((True, True), 0)
    args = (x, y, out, 16, tl.float32, tl.float32, False, False)
    grid = lambda meta: (1,)  # noqa: E731
    cfg = next(iter(kernel.cache.values()))
    lc = kernel.kernel_launcher()
    device = lc.current_device()
    kept = lc.compiled[lc._key(args, {}, cfg, device)]
    stream = lc.current_stream(device)
    runner = kept.kernel[(1, 1, 1)]
    get_device, get_stream = lc.current_device, lc.current_stream
    lib = torch.library.Library("fgbench", "DEF")  # add.Tensor's schema, a Python kernel that does nothing
    lib.define("add(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor")
    lib.impl("add", lambda a, b, alpha=1: a, "CUDA")
    lib.define("naive_add(Tensor self, Tensor other, *, Scalar alpha=1) -> Tensor")  # the reference point
    lib.impl("naive_add", _naive_add, "CUDA")
    ptrs = (x.data_ptr(), y.data_ptr(), out.data_ptr(), *args[3:])
    cases = {
        "torch.add, eager": (lambda: torch.add(x, y), None),
        "torch.add, flag_gems on (dispatch + op)": (lambda: torch.add(x, y), gems),
        "torch.add, flag_gems' wrappers switched off": (lambda: torch.add(x, y), _switched_off),
        "torch.mul(x, 2.0), eager": (lambda: torch.mul(x, 2.0), None),
        "torch.mul(x, 2.0), flag_gems' wrappers switched off": (lambda: torch.mul(x, 2.0), _switched_off),
        "ADD(x, y): the Pointwise object (direct launch)": (lambda: ADD(x, y), None),
        "LibTuner run (key, config, launcher)": (lambda: kernel.run(*args, grid=grid), None),
        "LibTuner key_of alone": (lambda: kernel.key_of(args, {}), None),
        "tuner.launch Launcher (kept kernel)": (lambda: lc((1,), args, {}, cfg), None),
        "Launcher key alone": (lambda: lc._key(args, {}, cfg, device), None),
        "compiled[grid](..., stream=s) by hand": (lambda: kept.kernel[(1, 1, 1)](*args, *kept.tail, stream=stream), None),
        "the runner of compiled[grid], reused": (lambda: runner(*args, *kept.tail, stream=stream), None),
        "the same runner, pointers as ints": (lambda: runner(*ptrs, *kept.tail, stream=stream), None),
        "torch.empty_like": (lambda: torch.empty_like(x), None),
        "torch.empty(x.shape, dtype=, device=)": (lambda: torch.empty(x.shape, dtype=x.dtype, device=x.device), None),
        "torch.empty(size=x.shape, dtype=, device=)": (lambda: torch.empty(size=x.shape, dtype=x.dtype, device=x.device), None),
        "current device + stream (Triton driver)": (lambda: get_stream(get_device()), None),
        "dispatch into a Python lambda (op of add's schema)": (lambda: torch.ops.fgbench.add(x, y), None),
        "a naive Python-registered Triton add (kernel[grid] per call)": (lambda: torch.ops.fgbench.naive_add(x, y), None),
    }
    try:
        return host_us_interleaved(cases)
    finally:
        lib._destroy()


def ops() -> list[tuple[str, float, float]]:
    x = torch.randn(4, 64, device="cuda", dtype=BF16)
    w = torch.randn(64, device="cuda", dtype=BF16)
    ids, table = torch.randint(0, 64, (4, 1), device="cuda"), torch.randn(64, 64, device="cuda", dtype=BF16)
    cache, new = torch.randn(8, 32, 64, 128, device="cuda", dtype=BF16), torch.randn(8, 32, 1, 128, device="cuda", dtype=BF16)
    cases = {
        "add": lambda: x + x,
        "mul scalar": lambda: x * 2.0,
        "mul broadcast (x * w)": lambda: x * w,
        "silu": lambda: torch.nn.functional.silu(x),
        "to(float32)": lambda: x.to(torch.float32),
        "rms_norm": lambda: torch.nn.functional.rms_norm(x, (64,), w, 1e-6),
        "softmax": lambda: torch.softmax(x, -1),
        "sum": lambda: x.sum(),
        "mean(-1)": lambda: x.mean(-1),
        "layer_norm": lambda: torch.nn.functional.layer_norm(x, (64,), w, w),
        "embedding": lambda: torch.nn.functional.embedding(ids, table),
        "linear 4x64x64": lambda: torch.nn.functional.linear(x, table),
        "cat (KV append)": lambda: torch.cat([cache, new], dim=-2),
    }
    timed = host_us_interleaved({f"{side} {name}": (fn, ctx) for name, fn in cases.items() for side, ctx in (("torch", None), ("gems", gems_only))})
    return [(name, timed[f"torch {name}"], timed[f"gems {name}"]) for name in cases]


def main() -> None:
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {__import__('triton').__version__}")
    if "--ops" not in sys.argv:  # --ops: only the end-to-end table (it runs on older trees too)
        print("\n| layer (add of 2 x 16 bf16) | host us/call |\n|---|---|")
        for name, us in layers().items():
            print(f"| {name} | {us:.2f} |")
    inference = "--inference-mode" in sys.argv
    print(f"\n| op (4x64 bf16{', inference_mode' if inference else ''}) | torch us/call | flag_gems us/call | ratio |\n|---|---|---|---|")
    with torch.inference_mode() if inference else contextlib.nullcontext():
        table = ops()
    for name, t, g in table:
        print(f"| {name} | {t:.2f} | {g:.2f} | {g / t:.2f}x |")


if __name__ == "__main__":
    main()
