"""flag_gems GEMM vs torch (cuBLAS) on the Llama-2-7B linear shapes, after tuning.

Run on the GPU machine: ``python benchmarks/bench_gemm.py [--dtypes bf16,fp16] [--db PATH]``.
Tunes every key first (``gems-pretune``'s job runner, configs compiled ahead in parallel,
into the given DB; keys already there are kept), then times both side by side with
``triton.testing.do_bench`` and prints a markdown table: TFLOP/s, the ratio flag_gems /
cuBLAS, and the fraction of the measured bf16 peak.
"""
from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

NK = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096), (12288, 4096)]
MS = [1, 16, 128, 512, 2048, 4096]
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dtypes", default="bf16,fp16")
    p.add_argument("--db", default=os.path.join(tempfile.mkdtemp(prefix="gems-gemm-"), "tuning.db"))
    p.add_argument("--ms", default=",".join(map(str, MS)))
    args = p.parse_args()
    os.environ.setdefault("FLAGGEMS_TUNING_DB", args.db)
    os.environ.setdefault("FLAGGEMS_AUTOTUNE", "miss")

    import torch
    import triton
    from triton.testing import do_bench

    import tuner
    from flag_gems.ops.mm import gemm
    from tuner.precompile import default_workers
    from tuner.pretune import run_jobs
    from tuner.workload import Job

    ms = [int(m) for m in args.ms.split(",")]
    # F.linear's call (x @ weight.t()): the key the timed gemm() calls below request
    jobs = [Job("linear", ((m, k), (n, k)), DTYPES[d]) for d in args.dtypes.split(",") for n, k in NK for m in ms]
    t_tune = time.time()
    summary = run_jobs(jobs, progress=False, compile_workers=default_workers())
    print(f"pretuned {len(summary.tuned)} keys ({summary.jobs_failed} jobs failed) in {time.time() - t_tune:.0f} s")
    peak_a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    peak_ms = do_bench(lambda: torch.mm(peak_a, peak_a), warmup=50, rep=300)
    peak = 2 * 8192**3 / peak_ms / 1e9
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"measured bf16 peak (cuBLAS 8192^3): {peak:.0f} TFLOP/s")

    rows = []
    t_time = time.time()
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, DTYPES[dname])
        for n, k in NK:
            w = torch.randn(n, k, device="cuda", dtype=dtype) / math.sqrt(k)
            for m in ms:
                x = torch.randn(m, k, device="cuda", dtype=dtype)
                out = torch.empty(m, n, device="cuda", dtype=dtype)
                gemm(x, w.t(), out)  # a hit: pretuned above
                ref = torch.mm(x, w.t())
                err = (out.float() - ref.float()).abs().max().item()
                t_gems = do_bench(lambda: gemm(x, w.t(), out), warmup=25, rep=100)
                t_torch = do_bench(lambda: torch.mm(x, w.t(), out=ref), warmup=25, rep=100)
                flops = 2 * m * n * k
                rows.append((dname, m, n, k, flops / t_gems / 1e9, flops / t_torch / 1e9, t_torch / t_gems, err))
    print(f"timing wall time: {time.time() - t_time:.0f} s; tuner stats: {tuner.stats()}")
    print("| dtype | M | N | K | flag_gems TFLOP/s | cuBLAS TFLOP/s | speedup vs cuBLAS | % of peak | max abs err |")
    print("|---|---|---|---|---|---|---|---|---|")
    for d, m, n, k, tg, tt, ratio, err in rows:
        print(f"| {d} | {m} | {n} | {k} | {tg:.1f} | {tt:.1f} | {ratio:.2f}x | {100 * tg / peak:.0f}% | {err:.2e} |")
    print("\n| tuned key (m_class, M bucket, N, K, batch, layouts, dtypes) | config |\n|---|---|")
    for (kernel, key), cfg in sorted(tuner.resolved_configs().items(), key=str):
        if kernel.endswith("_mm_kernel"):
            c = {k: v for k, v in cfg.items() if v is not None and k not in ("num_ctas", "maxnreg")}
            print(f"| {list(key[:7])} {[str(d).removeprefix('torch.') for d in key[7:8]]} | {c} |")
    ratios = [r[6] for r in rows]
    geo = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    print(f"\ngeomean speedup vs cuBLAS: {geo:.3f}x; min {min(ratios):.2f}x; max {max(ratios):.2f}x")
    for d in {r[0] for r in rows}:
        rs = [r[6] for r in rows if r[0] == d]
        print(f"  {d}: geomean {math.exp(sum(map(math.log, rs)) / len(rs)):.3f}x, min {min(rs):.2f}x")


if __name__ == "__main__":
    main()
