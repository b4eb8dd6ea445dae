"""flag_gems vs torch on memory-bound LLM ops, side by side, on the GPU machine.

``python benchmarks/bench_ops.py [--only NAME...]`` prints a markdown table: time, speedup and achieved
bandwidth at LLM sizes in bf16 (flag_gems ops called through torch.* under
``use_gems()``, so dispatch is included), then host microseconds per call on a tiny
tensor. Configs come from the tuning DB (FLAGGEMS_AUTOTUNE=miss tunes once, untimed).

Two device times per side: ``do_bench`` (a cache flush, then the call between two
events: a call whose host part outlasts the flush's device time shows its host time too)
and ``do_bench_cudagraph`` (the call captured once in a CUDA graph and replayed: the
kernels' device time alone). Where they differ, the op is host-bound at that size.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("FLAGGEMS_TUNING_DB", os.path.join(tempfile.mkdtemp(prefix="gems-ops-"), "tuning.db"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench, do_bench_cudagraph  # noqa: E402

import flag_gems  # noqa: E402
import tuner  # noqa: E402
from _host_timing import gems_only, host_us_interleaved  # noqa: E402  (benchmarks/, the script's own folder)
from flag_gems import fused  # noqa: E402
from tests.helpers import count_kernels  # noqa: E402  (run from the repo root, PYTHONPATH=.)

BF16 = torch.bfloat16


def nbytes(*ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def cases():
    """(name, size label, torch fn, flag_gems fn or None (= same fn under use_gems), inputs, bytes moved)."""
    big = (8192, 4096)
    x = torch.randn(big, device="cuda", dtype=BF16)
    y = torch.randn(big, device="cuda", dtype=BF16)
    w = torch.randn(big[1], device="cuda", dtype=BF16)
    logits = torch.randn(4096, 32000, device="cuda", dtype=BF16)
    target = torch.randint(0, 32000, (4096,), device="cuda")
    gate = torch.randn(8192, 2 * 11008, device="cuda", dtype=BF16)
    table = torch.randn(32000, 4096, device="cuda", dtype=BF16)
    ids = torch.randint(0, 32000, (8192,), device="cuda")
    cache = torch.randn(8, 32, 2047, 128, device="cuda", dtype=BF16)
    new = torch.randn(8, 32, 1, 128, device="cuda", dtype=BF16)
    q = torch.randn(1, 4096, 32, 128, device="cuda", dtype=BF16)
    k = torch.randn(1, 4096, 32, 128, device="cuda", dtype=BF16)
    cos = torch.randn(4096, 64, device="cuda", dtype=BF16)
    sin = torch.randn(4096, 64, device="cuda", dtype=BF16)
    xs = "8192x4096"

    def torch_rope(q, k, cos, sin):
        c = torch.cat([cos, cos], -1)[None, :, None, :]
        s = torch.cat([sin, sin], -1)[None, :, None, :]

        def rot(t):
            return torch.cat([-t[..., 64:], t[..., :64]], -1)

        return q * c + rot(q) * s, k * c + rot(k) * s

    def torch_add_rms(x, r, w):
        r = x + r
        return F.rms_norm(r, (4096,), w, 1e-6), r

    yield "add", xs, lambda: torch.add(x, y), None, nbytes(x, y, x)
    yield "mul (scalar)", xs, lambda: torch.mul(x, 1.5), None, nbytes(x, x)
    yield "exp", xs, lambda: torch.exp(x), None, nbytes(x, x)
    yield "silu", xs, lambda: F.silu(x), None, nbytes(x, x)
    yield "gelu (tanh)", xs, lambda: F.gelu(x, approximate="tanh"), None, nbytes(x, x)
    yield "to fp32", xs, lambda: x.to(torch.float32), None, nbytes(x) * 3
    yield "where", xs, lambda: torch.where(x > 0, x, y), None, nbytes(x, y, x) + x.numel()
    yield "sum (dim -1)", xs, lambda: x.sum(-1), None, nbytes(x)
    yield "amax (dim -1)", xs, lambda: x.amax(-1), None, nbytes(x)
    yield "softmax", "4096x32000", lambda: torch.softmax(logits, -1), None, nbytes(logits, logits)
    yield "log_softmax", "4096x32000", lambda: torch.log_softmax(logits, -1), None, nbytes(logits, logits)
    yield "cross_entropy", "4096x32000", lambda: F.cross_entropy(logits, target), None, nbytes(logits)
    yield "layer_norm", xs, lambda: F.layer_norm(x, (4096,), w, w), None, nbytes(x, x)
    yield "rms_norm (aten)", xs, lambda: F.rms_norm(x, (4096,), w, 1e-6), None, nbytes(x, x)
    yield "cumsum (dim -1)", xs, lambda: x.cumsum(-1), None, nbytes(x, x)
    yield "embedding", "8192 of 32000x4096", lambda: F.embedding(ids, table), None, 2 * 8192 * 4096 * 2
    yield "cat (KV cache append)", "8x32x2047x128 + 1", lambda: torch.cat([cache, new], dim=2), None, 2 * nbytes(cache, new)
    yield "index_select", "8192 rows of 32000x4096", lambda: torch.index_select(table, 0, ids), None, 2 * 8192 * 4096 * 2
    heads = torch.randint(0, 32, (16,), device="cuda")
    yield "index_select (heads)", "16 of 8192x32x128", lambda: torch.index_select(x.view(8192, 32, 128), 1, heads), None, 2 * 8192 * 16 * 128 * 2
    cols = torch.randint(0, 4096, (1024,), device="cuda")
    yield "index_select (columns)", "1024 of 8192x4096", lambda: torch.index_select(x, 1, cols), None, 2 * 8192 * 1024 * 2
    yield "silu_and_mul (fused)", "8192x22016", lambda: F.silu(gate[:, :11008]) * gate[:, 11008:], lambda: fused.silu_and_mul(gate), nbytes(gate) * 3 // 2
    xa, ya = x.clone(), y.clone()  # updated in place each call; stays bounded (normalized)
    yield "fused_add_rms_norm", xs, lambda: torch_add_rms(x, y, w), lambda: fused.fused_add_rms_norm(xa, ya, w, 1e-6), nbytes(x) * 4
    yield "rotary (neox, q+k)", "1x4096x32x128", lambda: torch_rope(q, k, cos, sin), lambda: fused.apply_rotary_pos_emb(q, k, cos, sin), nbytes(q, k) * 2


def spin_up(seconds: float = 2.0) -> None:
    """Bring the GPU to its boost clock before anything is tuned or timed: it idles at a
    few hundred MHz, and a config tuned while clocks ramp is picked on noise."""
    a = torch.randn(8192, 8192, device="cuda", dtype=BF16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ a
        torch.cuda.synchronize()


def _graph_us(fn) -> float | None:
    """Device time of ``fn`` replayed from a CUDA graph (us); None where it cannot be
    captured (a host sync inside)."""
    try:
        return do_bench_cudagraph(fn, rep=25) * 1e3
    except Exception:  # not capturable: the do_bench column stands alone
        return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=None, help="ops whose name contains one of these (default: all)")
    only = ap.parse_args().only
    if os.environ.get("BENCH_SPIN_UP", "1") == "1":
        spin_up()
    picked: list[str] = []
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("| op | size (bf16) | torch us | flag_gems us | speedup | flag_gems GB/s | torch us, graph | flag_gems us, graph | speedup, graph |")
    print("|---|---|---|---|---|---|---|---|---|")
    flag_gems.enable()
    flag_gems.disable()
    for name, size, torch_fn, gems_fn, moved in cases():
        if only and not any(o in name for o in only):
            continue
        before = tuner.resolved_configs()
        try:
            t_torch, g_torch = do_bench(torch_fn, warmup=25, rep=100), _graph_us(torch_fn)
            if gems_fn is None:
                with gems_only():
                    with count_kernels() as ran:
                        torch_fn()  # tune once, untimed; and prove a flag_gems kernel ran
                    t_gems, g_gems = do_bench(torch_fn, warmup=25, rep=100), _graph_us(torch_fn)
            else:
                with count_kernels() as ran:
                    gems_fn()
                t_gems, g_gems = do_bench(gems_fn, warmup=25, rep=100), _graph_us(gems_fn)
            if not ran:
                raise RuntimeError("no Triton kernel ran: the op fell back to aten")
            graph = f"{g_torch:.1f} | {g_gems:.1f} | {g_torch / g_gems:.2f}x" if g_torch and g_gems else "n/a | n/a | "
            print(f"| {name} | {size} | {t_torch * 1e3:.1f} | {t_gems * 1e3:.1f} | {t_torch / t_gems:.2f}x | {moved / t_gems / 1e6:.0f} | {graph} |")
            picked += [f"{name}: {k[0].rsplit('.', 1)[-1]} {c}" for k, c in tuner.resolved_configs().items() if k not in before]
        except Exception as e:  # report and go on: one broken op must not hide the rest
            print(f"| {name} | {size} | error: {type(e).__name__}: {str(e)[:120]} | | | |")
    print("\nconfigs picked by the tuner:\n" + "\n".join(picked))
    tiny = torch.randn(16, device="cuda", dtype=BF16)
    rows = [("add", lambda: torch.add(tiny, tiny)), ("exp", lambda: torch.exp(tiny)), ("sum", lambda: tiny.sum()), ("softmax", lambda: torch.softmax(tiny, -1))]
    for name, fn in rows:
        with flag_gems.use_gems(), count_kernels() as ran:
            fn()
        assert ran, f"{name}: no Triton kernel ran"
    # torch and flag_gems in turn, round after round: a noisy host shifts both alike
    timed = host_us_interleaved({f"{side} {name}": (fn, ctx) for name, fn in rows for side, ctx in (("torch", None), ("gems", gems_only))})
    print("\n| op (16 elements) | torch host us/call | flag_gems host us/call |")
    print("|---|---|---|")
    for name, _ in rows:
        print(f"| {name} | {timed[f'torch {name}']:.1f} | {timed[f'gems {name}']:.1f} |")


if __name__ == "__main__":
    main()
