"""flag_gems vs torch on sort, topk and unique at sampling and long-row sizes, on the GPU.

Sampling sorts a batch of vocabulary rows (top-p: descending fp32 logits of 32000 to
128256 entries) or takes their top k; the long rows and 64-bit keys are the radix and
merge sorts' other cases. Each row: the path taken, device time of both sides with
``triton.testing.do_bench`` (the call as a program makes it, host included where it
outlasts the device) and from CUDA-graph replays (the kernels alone), the ratio, each
side's host time per call, and whether both gave the same indices (stable sort) or
values. The path is the eager one; in a graph capture a long 32-bit-or-narrower sort
takes the radix sort whatever its size.

    PYTHONPATH=. python benchmarks/bench_sort.py [--paths | --topk | --topk-paths]
"""
from __future__ import annotations

import time

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

from _host_timing import gems_only  # (benchmarks/, the script's own folder)
from tests.helpers import count_kernels  # (run from the repo root, PYTHONPATH=.)


def cases():
    """(name, shape label, fn of the input, input)."""
    dev = "cuda"
    for rows, vocab in ((1, 32000), (8, 32000), (64, 32000), (8, 128256), (64, 128256)):
        x = torch.randn(rows, vocab, device=dev)
        yield "sort desc fp32", f"{rows}x{vocab}", lambda t: torch.sort(t, dim=-1, descending=True, stable=True), x
    x = torch.randn(64, 32000, device=dev, dtype=torch.bfloat16)
    yield "sort desc bf16", "64x32000", lambda t: torch.sort(t, dim=-1, descending=True, stable=True), x
    for rows, vocab in ((8, 32000), (64, 128256)):
        x = torch.randn(rows, vocab, device=dev)
        yield "topk 50", f"{rows}x{vocab}", lambda t: torch.topk(t, 50), x
    yield "sort fp32", "64x100000", lambda t: torch.sort(t, stable=True), torch.randn(64, 100000, device=dev)
    yield "sort fp32", "1x4M", lambda t: torch.sort(t, stable=True), torch.randn(1, 4 << 20, device=dev)
    yield "sort int64", "64x100000", lambda t: torch.sort(t, stable=True), torch.randint(-(2**40), 2**40, (64, 100000), device=dev)
    yield "unique int64", "1M", lambda t: torch.unique(t), torch.randint(0, 1 << 18, (1 << 20,), device=dev)


def _graph_us(fn) -> float | None:
    try:
        return do_bench_cudagraph(fn, rep=25) * 1e3
    except Exception:  # not capturable (a host sync: unique's output size)
        return None


def _host_us(fn, calls: int = 10) -> float:
    """Host time of one call: ``calls`` calls issued back to back between two syncs, few
    enough that the launch queue never fills (so the device's time does not count)."""
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t1 = time.perf_counter()
    torch.cuda.synchronize()
    return (t1 - t0) / calls * 1e6


def main() -> None:
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("| op | shape | path | torch us | flag_gems us | speedup | torch us, graph | flag_gems us, graph | speedup, graph "
          "| torch host us | flag_gems host us | same result |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, shape, fn, x in cases():
        try:
            ref = fn(x)
            t_torch, g_torch = do_bench(lambda: fn(x), rep=100) * 1e3, _graph_us(lambda: fn(x))
            with gems_only():
                with count_kernels() as ran:
                    got = fn(x)  # tunes once, untimed
                if not ran:
                    raise RuntimeError("no Triton kernel ran")
                t_gems, g_gems = do_bench(lambda: fn(x), rep=100) * 1e3, _graph_us(lambda: fn(x))
                h_gems = _host_us(lambda: fn(x))
            h_torch = _host_us(lambda: fn(x))
            same = all(torch.equal(a, b) for a, b in zip(ref, got)) if isinstance(ref, tuple) else torch.equal(ref, got)
            graph = f"{g_torch:.1f} | {g_gems:.1f} | {g_torch / g_gems:.2f}x" if g_torch and g_gems else "n/a | n/a |"
            print(f"| {name} | {shape} | {_path(ran)} | {t_torch:.1f} | {t_gems:.1f} | {t_torch / t_gems:.2f}x | {graph} "
                  f"| {h_torch:.1f} | {h_gems:.1f} | {same} |")
        except Exception as e:  # report and go on
            print(f"| {name} | {shape} | | error: {type(e).__name__}: {str(e)[:150]} | | | | | | | | |")


def paths() -> None:
    """``--paths``: the radix and the merge sort forced in turn on every long-row fp32 /
    bf16 sort size, beside torch: where the RADIX_NUMEL_PER_PASS threshold belongs. (The
    forced merge sort is forced in the graph captures too, where a sort otherwise takes
    the radix sort.)"""
    from flag_gems.ops import sort as sort_mod

    print("\n| sort desc | torch us | merge us | radix us | torch graph | merge graph | radix graph "
          "| torch host | merge host | radix host |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    default, capturing = sort_mod.RADIX_NUMEL_PER_PASS, sort_mod.capturing_graph
    shapes = [(1, 32000), (1, 128256), (8, 32000), (4, 128256), (64, 32000), (8, 128256), (16, 128256), (64, 128256)]
    for dtype in (torch.float32, torch.bfloat16):
        for rows, n in shapes:
            x = torch.randn(rows, n, device="cuda", dtype=dtype)
            fn = lambda: torch.sort(x, dim=-1, descending=True, stable=True)  # noqa: E731
            row = [do_bench(fn, rep=100) * 1e3, _graph_us(fn) or float("nan"), _host_us(fn)]
            ref = fn()
            for threshold in (1 << 62, 0):  # merge, radix
                sort_mod.RADIX_NUMEL_PER_PASS = threshold
                sort_mod.capturing_graph = lambda: threshold == 0
                try:
                    with gems_only():
                        got = fn()
                        assert all(torch.equal(a, b) for a, b in zip(got, ref)), "differs from torch"
                        row += [do_bench(fn, rep=100) * 1e3, _graph_us(fn) or float("nan"), _host_us(fn)]
                finally:
                    sort_mod.RADIX_NUMEL_PER_PASS, sort_mod.capturing_graph = default, capturing
            t, tg, th, m, mg, mh, r, rg, rh = row
            name = f"{str(dtype).split('.')[-1]} {rows}x{n}"
            print(f"| {name} | {t:.1f} | {m:.1f} | {r:.1f} | {tg:.1f} | {mg:.1f} | {rg:.1f} | {th:.1f} | {mh:.1f} | {rh:.1f} |")


def topk_sizes() -> None:
    """``--topk``: torch.topk at sampling sizes (rows x vocabulary, several k), both sides'
    graph-replay device time, and whether flag_gems' values and indices equal a stable
    descending sort's first k (the lowest index first among equal values)."""
    print("\n| topk | k | torch us, graph | flag_gems us, graph | speedup | exact |")
    print("|---|---|---|---|---|---|")
    sizes = [(64, 128256, 50), (8, 128256, 50), (1, 128256, 50), (64, 32000, 50), (8, 32000, 50),
             (64, 128256, 1), (64, 128256, 8), (64, 128256, 100), (64, 128256, 256), (64, 152064, 20),
             (64, 128256, 1024), (8, 128256, 1024)]  # (k=1024: the radix select)
    for dtype in (torch.float32, torch.bfloat16):
        for rows, n, k in sizes:
            x = torch.randn(rows, n, device="cuda", dtype=dtype)
            fn = lambda: torch.topk(x, k)  # noqa: E731
            t = _graph_us(fn)
            with gems_only():
                v, i = fn()
                g = _graph_us(fn)
            ref = torch.sort(x, dim=-1, descending=True, stable=True)
            exact = torch.equal(v, ref.values[:, :k]) and torch.equal(i, ref.indices[:, :k])
            print(f"| {str(dtype).split('.')[-1]} {rows}x{n} | {k} | {t:.1f} | {g:.1f} | {t / g:.2f}x | {exact} |")


def topk_paths() -> None:
    """``--topk-paths``: each top-k by the path it takes (``_selects``) and by the other
    one forced (the threshold stages, or for k > MAX_SORT / 2 a full sort cut to k,
    against the radix select), graph-replay device time beside torch's, host time per
    call, and whether each equals a stable descending sort's first k: where
    SELECT_MIN_K belongs."""
    from flag_gems.ops import sort as sort_mod

    print("\n| topk | k | torch graph | stages/sort graph | select graph | torch host | stages host | select host "
          "| exact stages / select |")
    print("|---|---|---|---|---|---|---|---|---|")
    sizes = [(64, 128256), (8, 128256), (1, 128256), (64, 32000)]
    ks = [50, 100, 128, 256, 512, 1024, 2048, 4096]
    default = sort_mod.SELECT_MIN_K, sort_mod._selects
    for dtype in (torch.float32, torch.bfloat16):
        for rows, n in sizes:
            x = torch.randn(rows, n, device="cuda", dtype=dtype)
            ref = torch.sort(x, dim=-1, descending=True, stable=True)
            for k in ks:
                fn = lambda: torch.topk(x, k)  # noqa: E731
                row, exact = [_graph_us(fn), _host_us(fn)], []
                for select in (False, True):
                    sort_mod._selects = (lambda *a: select) if not select else default[1]
                    sort_mod.SELECT_MIN_K = 1
                    try:
                        with gems_only():
                            v, i = fn()
                            row += [_graph_us(fn), _host_us(fn)]
                        exact.append(torch.equal(v, ref.values[:, :k]) and torch.equal(i, ref.indices[:, :k]))
                    finally:
                        sort_mod.SELECT_MIN_K, sort_mod._selects = default
                t, th, s, sh, r, rh = row
                name = f"{str(dtype).split('.')[-1]} {rows}x{n}"
                print(f"| {name} | {k} | {t:.1f} | {s:.1f} | {r:.1f} | {th:.1f} | {sh:.1f} | {rh:.1f} | {exact[0]} / {exact[1]} |")


def _path(ran) -> str:
    """Which sort ran: radix passes, chunk sorts and merges, or one program a row."""
    if ran["radix_scatter_kernel"]:
        return f"radix ({ran['radix_scatter_kernel']} passes)"
    if ran["sort_merge_kernel"]:
        return f"merge ({ran['sort_merge_kernel']} passes)"
    return "registers"


if __name__ == "__main__":
    import sys

    if "--paths" in sys.argv:
        paths()
    elif "--topk-paths" in sys.argv:
        topk_paths()
    elif "--topk" in sys.argv:
        topk_sizes()
    else:
        main()
