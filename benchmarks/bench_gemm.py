"""flag_gems GEMM vs torch (cuBLAS) on the Llama-2-7B linear shapes, after tuning.

Run on the GPU machine: ``python benchmarks/bench_gemm.py [--dtypes bf16,fp16] [--db PATH]``.
Tunes every key first (``gems-pretune``'s job runner, configs compiled ahead in parallel,
into the given DB; keys already there are kept), then times both side by side and prints a
markdown table: TFLOP/s and the ratio flag_gems / cuBLAS in device time (CUDA-graph
replays over operand copies larger than L2: ``tuner.bench.graph_timer``), the same ratio
timed eagerly with ``triton.testing.do_bench`` (host launch cost included: what a loop
without graphs sees), and flag_gems' throughput as a fraction of cuBLAS's at 8192^3 bf16,
timed the same way (a reference rate, not the hardware peak: a shape can exceed it).
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import tempfile
import time

NK = [(4096, 4096), (11008, 4096), (4096, 11008), (32000, 4096), (12288, 4096)]
MS = [1, 16, 128, 512, 2048, 4096]
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def host_cost(torch, gemm) -> None:
    """Host microseconds per call on a tiny GEMM (the launch path, not the kernel)."""
    import time

    import torch.nn.functional as F

    import flag_gems

    x, w = torch.randn(1, 256, device="cuda", dtype=torch.bfloat16), torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(1, 256, device="cuda", dtype=torch.bfloat16)

    def per_call(name, fn):
        for _ in range(200):
            fn()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(2000):
            fn()
        host = (time.perf_counter() - t0) / 2000 * 1e6
        torch.cuda.synchronize()
        print(f"host cost per call, {name}: {host:.1f} us")

    per_call("torch.mm", lambda: torch.mm(x, w.t(), out=out))
    per_call("F.linear (torch)", lambda: F.linear(x, w))
    per_call("flag_gems gemm()", lambda: gemm(x, w.t(), out))
    flag_gems.enable()
    per_call("F.linear under flag_gems.enable()", lambda: F.linear(x, w))
    flag_gems.disable()


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
    from tuner.bench import BenchRequest, graph_timer, rotations
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
    peak_ms = graph_timer(BenchRequest(lambda: torch.mm(peak_a, peak_a), "cublas", {}, (), 25, 100))[0]
    peak = 2 * 8192**3 / peak_ms / 1e9
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"reference rate (cuBLAS 8192^3 bf16, graph-timed): {peak:.0f} TFLOP/s")

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
                err = (out.float() - ref.float()).abs().max().item() / ref.float().abs().max().item()
                # device time: CUDA-graph replays over copies of the operands larger than L2
                sets = itertools.cycle(rotations((x, w, out, ref), {}))

                def run_gems():
                    xi, wi, oi, _ = next(sets)[0]
                    gemm(xi, wi.t(), oi)

                def run_torch():
                    xi, wi, _, ri = next(sets)[0]
                    torch.mm(xi, wi.t(), out=ri)

                t_gems = graph_timer(BenchRequest(run_gems, "gems", {}, (), 25, 100))[0]
                t_torch = graph_timer(BenchRequest(run_torch, "torch", {}, (), 25, 100))[0]
                # eager: what a loop without graphs sees, host launch cost included
                e_gems = do_bench(lambda: gemm(x, w.t(), out), warmup=25, rep=100)
                e_torch = do_bench(lambda: torch.mm(x, w.t(), out=ref), warmup=25, rep=100)
                flops = 2 * m * n * k
                rows.append((dname, m, n, k, flops / t_gems / 1e9, flops / t_torch / 1e9, t_torch / t_gems, e_torch / e_gems, err))
    print(f"timing wall time: {time.time() - t_time:.0f} s; tuner stats: {tuner.stats()}")
    print("| dtype | M | N | K | flag_gems TFLOP/s | cuBLAS TFLOP/s | speedup vs cuBLAS (graph) | (eager) | % of cuBLAS 8192^3 | max rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d, m, n, k, tg, tt, ratio, eager, err in rows:
        print(f"| {d} | {m} | {n} | {k} | {tg:.1f} | {tt:.1f} | {ratio:.2f}x | {eager:.2f}x | {100 * tg / peak:.0f}% | {err:.1e} |")
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
    host_cost(torch, gemm)
    eager = [r[7] for r in rows]
    print(f"eager (host launch included): geomean {math.exp(sum(map(math.log, eager)) / len(eager)):.3f}x, min {min(eager):.2f}x")


if __name__ == "__main__":
    main()
