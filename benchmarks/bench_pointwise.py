"""Where a pointwise op's time goes, on the GPU: torch vs flag_gems through torch.*
(dispatch included) vs flag_gems' kernel launched directly vs a minimal hand-written
Triton kernel, for the same bf16 add / exp / mul-by-scalar. Each timed two ways:
do_bench (L2 flushed between runs) and back-to-back launches between two events
(throughput, host overhead hidden if the GPU is the bottleneck).

    PYTHONPATH=. python benchmarks/bench_pointwise.py
"""
from __future__ import annotations

import os
import tempfile

os.environ.setdefault("FLAGGEMS_TUNING_DB", os.path.join(tempfile.mkdtemp(prefix="gems-pw-"), "tuning.db"))

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.testing import do_bench  # noqa: E402

import flag_gems  # noqa: E402
import tuner  # noqa: E402
from tests.helpers import count_kernels  # noqa: E402


@triton.jit
def _add_ref(x, y, out, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(x + offs, mask=mask).to(tl.float32)
    b = tl.load(y + offs, mask=mask).to(tl.float32)
    tl.store(out + offs, a + b, mask=mask)


def back_to_back_us(fn, n=200) -> float:
    for _ in range(10):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n * 1e3


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    x = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    y = torch.randn_like(x)
    out = torch.empty_like(x)
    n = x.numel()
    nb3, nb2 = 3 * n * 2, 2 * n * 2

    flag_gems.enable()  # installed and on for the whole run: no per-call scope cost
    with count_kernels() as ran:
        torch.add(x, y), torch.exp(x), torch.mul(x, 1.5)
    assert ran, "no flag_gems kernel ran"
    flag_gems.disable()
    from flag_gems.ops.binary import ADD

    rows = []
    for block, warps in ((1024, 4), (2048, 8), (4096, 8)):
        rows.append((f"hand-written add, BLOCK {block} w{warps}", nb3, lambda b=block, w=warps: _add_ref[(triton.cdiv(n, b),)](x, y, out, n, BLOCK=b, num_warps=w)))
    rows += [
        ("torch add", nb3, lambda: torch.add(x, y)),
        ("flag_gems ADD() direct", nb3, lambda: ADD(x, y)),
        ("torch exp", nb2, lambda: torch.exp(x)),
        ("torch mul 1.5", nb2, lambda: torch.mul(x, 1.5)),
    ]
    print("| case | do_bench us | GB/s | back-to-back us | GB/s | flag_gems do_bench us | GB/s | flag_gems b2b us | GB/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, nbytes, fn in rows:
        t1, t2 = do_bench(fn, warmup=25, rep=100) * 1e3, back_to_back_us(fn)
        line = f"| {name} | {t1:.1f} | {nbytes / t1 / 1e3:.0f} | {t2:.1f} | {nbytes / t2 / 1e3:.0f} |"
        if name.startswith("torch"):
            flag_gems.enable()
            g1, g2 = do_bench(fn, warmup=25, rep=100) * 1e3, back_to_back_us(fn)
            flag_gems.disable()
            line += f" {g1:.1f} | {nbytes / g1 / 1e3:.0f} | {g2:.1f} | {nbytes / g2 / 1e3:.0f} |"
        else:
            line += " | | | |"
        print(line)
    # the configs the tuner picked for the flat kernels timed above
    for (kernel, key), cfg in tuner.resolved_configs().items():
        if kernel.rsplit(".", 1)[-1] in ("add_tt_flat", "exp_t_flat", "mul_ts_flat"):
            print(kernel, key, cfg)


if __name__ == "__main__":
    main()
