"""Host cost of a LibTuner hit: microseconds per call of a tiny tuned kernel through
LibTuner vs the same kernel launched with a fixed config through plain ``triton.jit``;
and each launch path: Triton's (``fn[grid](...)``), tuner.launch's kept compiled kernel,
and the compiled kernel launched by hand (the floor of Triton's public launch API).

Run on the GPU machine: ``python benchmarks/bench_libtuner_hit.py``. Prints a markdown
table for docs/performance.md.
"""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("FLAGGEMS_CACHE_DIR", tempfile.mkdtemp(prefix="gems-bench-"))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import tuner  # noqa: E402
from _host_timing import host_us  # noqa: E402  (benchmarks/, the script's own folder)
from tuner import launch, libtuner  # noqa: E402

N_CALLS = 20_000


@triton.jit
def scale_plain(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=mask) * 2, mask=mask)


scale_tuned = libtuner(
    configs=[triton.Config({"BLOCK": b}, num_warps=w) for b in (128, 256, 512) for w in (1, 4)],
    key=["n"], strategy=["log"],
)(triton.jit(scale_plain.fn))


def main() -> None:
    x = torch.randn(100, device="cuda")
    y = torch.empty_like(x)
    n = x.numel()
    scale_tuned[(1,)](x, y, n)  # tunes the key once (miss policy), then every call is a hit
    torch.testing.assert_close(y, x * 2)
    best = scale_tuned.cache[next(iter(scale_tuned.cache))]
    block = best["BLOCK"]
    opts = dict(BLOCK=block, num_warps=best["num_warps"])
    launch.set_enabled(False)
    plain = host_us(lambda: scale_plain[(1,)](x, y, n, **opts), N_CALLS, warmup=200)
    plain_all = host_us(lambda: scale_plain[(1,)](x, y, n, **best), N_CALLS, warmup=200)
    tuned_triton = host_us(lambda: scale_tuned[(1,)](x, y, n), N_CALLS, warmup=200)
    launch.set_enabled(True)
    kept = host_us(lambda: launch.launch(scale_plain, (1,), x, y, n, **opts), N_CALLS, warmup=200)
    tuned = host_us(lambda: scale_tuned[(1,)](x, y, n), N_CALLS, warmup=200)
    compiled = scale_plain[(1,)](x, y, n, **opts)
    stream = torch.cuda.current_stream().cuda_stream
    by_hand = host_us(lambda: compiled[(1, 1, 1)](x, y, n, block, stream=stream), N_CALLS, warmup=200)
    key_only = host_us(lambda: scale_tuned.key_of((x, y, n), {}), 100_000, warmup=200)
    torch_mul = host_us(lambda: torch.mul(x, 2, out=y), N_CALLS, warmup=200)
    torch.testing.assert_close(y, x * 2)
    s = tuner.stats()
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"stats: {s}")
    print("| launch | host us/call |")
    print("|---|---|")
    print(f"| plain triton.jit, fixed config (Triton's launch) | {plain:.2f} |")
    print(f"| plain triton.jit, the tuned config's every option passed | {plain_all:.2f} |")
    print(f"| the same kernel through tuner.launch (kept compiled kernel) | {kept:.2f} |")
    print(f"| the compiled kernel launched by hand, stream given | {by_hand:.2f} |")
    print(f"| LibTuner hit, Triton's launch | {tuned_triton:.2f} |")
    print(f"| LibTuner hit, tuner.launch (the default) | {tuned:.2f} |")
    print(f"| key computation alone | {key_only:.2f} |")
    print(f"| torch.mul(x, 2, out=y) for reference | {torch_mul:.2f} |")


if __name__ == "__main__":
    main()
