"""After ``gems-pretune WORKLOAD``: run the model's layer shapes through flag_gems in a
fresh process with ``FLAGGEMS_AUTOTUNE=never`` and show that nothing is benchmarked and
nothing misses; time the first call of each op family.

    FLAGGEMS_TUNING_DB=/tmp/llama7b.db FLAGGEMS_AUTOTUNE=never \
        python benchmarks/check_pretuned.py workloads/llama7b.yaml
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import flag_gems
import tuner
from flag_gems.fused import apply_rotary_pos_emb, fused_add_rms_norm, rms_norm, silu_and_mul
from flag_gems.tuning import vllm_sample
from tuner import workload as wl

FIRST_CALL: dict[str, float] = {}


def timed(family: str, fn):
    """Run ``fn``; the first call of each family is timed (synchronized)."""
    if family in FIRST_CALL:
        return fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    FIRST_CALL[family] = (time.perf_counter() - t0) * 1e3
    return out


def weights(m, dtype):
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dtype) * 0.02  # noqa: E731
    hd, q, kv = m.head_dim, m.heads * m.head_dim, m.kv_heads * m.head_dim
    return {
        "emb": r(m.vocab, m.hidden), "norm": r(m.hidden), "wq": r(q, m.hidden), "wk": r(kv, m.hidden), "wv": r(kv, m.hidden),
        "wo": r(m.hidden, q), "gate_up": r(2 * m.intermediate, m.hidden), "down": r(m.hidden, m.intermediate),
        "head": r(m.vocab, m.hidden), "cos": r(16384, hd // 2), "sin": r(16384, hd // 2),
    }


def layer(m, w, t: int) -> torch.Tensor:
    """vLLM's layer (merged gate_up, fused norms), with q/k/v as separate projections."""
    H, KV, hd = m.heads, m.kv_heads, m.head_dim
    ids = torch.randint(0, m.vocab, (t,), device="cuda")
    temperature = torch.rand(t, device="cuda") + 0.5  # the sampler's, made outside flag_gems
    with flag_gems.use_gems():
        x = timed("embedding", lambda: F.embedding(ids, w["emb"]))
        h = timed("rms_norm", lambda: rms_norm(x, w["norm"], m.rms_eps))
        q = timed("linear", lambda: F.linear(h, w["wq"]))
        k, _ = F.linear(h, w["wk"]), F.linear(h, w["wv"])  # v: its GEMM key
        q, k = timed("rotary", lambda: apply_rotary_pos_emb(q.view(t, H, hd), k.view(t, KV, hd), w["cos"][:t], w["sin"][:t]))
        o = F.linear(q.reshape(t, H * hd), w["wo"])
        x2 = timed("add", lambda: x + o)
        # in place on o and x, as vLLM calls it (both are used up; x2 holds their sum)
        hn, _ = timed("fused_add_rms_norm", lambda: fused_add_rms_norm(o, x, w["norm"], m.rms_eps))
        act = timed("silu_and_mul", lambda: silu_and_mul(F.linear(hn, w["gate_up"])))
        y = F.linear(act, w["down"]) + x2
        logits = F.linear(rms_norm(y, w["norm"], m.rms_eps), w["head"])
        return timed("sampler", lambda: vllm_sample(logits, temperature))  # vLLM's native sampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("workload")
    p.add_argument("--tokens", default="1,3,8,16,100,256,257,512,1000,2048,4096,8192")
    args = p.parse_args()
    wk = wl.load(args.workload)
    m = wk.model
    dtype = getattr(torch, m.dtype)
    w = weights(m, dtype)
    t0 = time.perf_counter()
    for t in map(int, args.tokens.split(",")):
        layer(m, w, t)
    torch.cuda.synchronize()
    s = tuner.stats()
    print(f"device: {torch.cuda.get_device_name()}; {len(args.tokens.split(','))} token counts in {time.perf_counter() - t0:.1f} s")
    print(f"tuner.stats(): {json.dumps(s)}")
    print("| op family | first call (ms, fresh process, pretuned DB) |")
    print("|---|---|")
    for fam, ms in FIRST_CALL.items():
        print(f"| {fam} | {ms:.1f} |")


if __name__ == "__main__":
    main()
