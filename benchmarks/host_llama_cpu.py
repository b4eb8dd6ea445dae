"""The host side of a small HF Llama's decode (or prefill) step, on CPU, without a GPU (issue 8).

A 2-layer Llama (hidden 256, bf16) decodes 8 sequences x 1 token over a 32-token cache
with plain ``flag_gems.enable()`` or with the transformers patches, every Triton launch
replaced by a stand-in that does nothing (``bench_host_overhead.py --kept``): what is
timed is HF's Python, torch's dispatch and allocations, and flag_gems' own Python -- the
GPU host path minus Triton's runner. Prints the median step; ``--agg`` adds a cProfile of
100 steps, own time per package and the flag_gems functions with the most.

    PYTHONPATH=.:benchmarks python benchmarks/host_llama_cpu.py plain|patches [--agg] [--phase prefill]
"""
from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import time

os.environ["TRITON_INTERPRET"] = "1"
os.environ.setdefault("FLAGGEMS_AUTOTUNE", "never")

import torch  # noqa: E402

import flag_gems  # noqa: E402
from bench_host_overhead import _stand_in_launches  # noqa: E402  (benchmarks/, the script's own folder)
from bench_llama import decode_step  # noqa: E402


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4,
                      num_hidden_layers=2, vocab_size=512, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).to(torch.bfloat16).eval()


def _category(path: str, name: str) -> str:
    if path == "~":
        return "C: " + name[:60]
    for part in ("flag_gems/", "tuner/"):
        if part in path:
            return part + path.split(part)[-1]
    return "transformers" if "transformers" in path else "torch (Python)" if "torch" in path else path


def _report(prof: cProfile.Profile, steps: int) -> None:
    stats = pstats.Stats(prof).stats
    own: dict[str, float] = {}
    for (path, _, name), (_, _, tottime, _, _) in stats.items():
        cat = _category(path, name)
        own[cat] = own.get(cat, 0.0) + tottime
    print(f"own time per step under cProfile (inflated): {sum(own.values()) / steps * 1e6:.0f} us")
    for cat, t in sorted(own.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{t / steps * 1e6:8.1f} us  {cat}")
    print("flag_gems functions:")
    rows = [(tt, nc, path.split("main/")[-1], line, name) for (path, line, name), (_, nc, tt, _, _) in stats.items()
            if "flag_gems/" in path or "/tuner/" in path]
    for tt, nc, path, line, name in sorted(rows, reverse=True)[:20]:
        print(f"{tt / steps * 1e6:8.1f} us {nc / steps:5.1f}/step  {path}:{line} {name}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["plain", "patches"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--agg", action="store_true")
    ap.add_argument("--phase", choices=["decode", "prefill"], default="decode")
    opts = ap.parse_args()
    model = _model()
    with torch.no_grad():
        cache = model(input_ids=torch.randint(0, 512, (8, 32)), use_cache=True).past_key_values
    tok = torch.randint(0, 512, (8, 1))
    _stand_in_launches()
    if opts.mode == "patches":
        flag_gems.apply_gems_patches_to_transformers()
    flag_gems.enable()

    if opts.phase == "decode":
        step = decode_step(model, cache, tok, ctx=32)
    else:  # one sequence of 512 tokens, as bench_llama's prefill
        ids = torch.randint(0, 512, (1, 512))
        step = lambda: model(input_ids=ids, use_cache=True)  # noqa: E731
    with torch.no_grad():
        for _ in range(20):
            step()
        times = []
        for _ in range(opts.steps):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        print(f"{opts.mode}: {opts.phase} step median {statistics.median(times) * 1e3:.3f} ms (host only, stand-in launches)")
        if opts.agg:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(100):
                step()
            prof.disable()
            _report(prof, 100)


if __name__ == "__main__":
    main()
