"""GPU check of issue 8: a 2-layer Llama-2-7B-shaped model (hidden 4096, intermediate
11008, 32 heads, vocab 32000, bf16, random weights) under torch eager, plain
``flag_gems.enable()`` and enable() + ``apply_gems_patches_to_transformers()``; both
flag_gems modes also with every kernel launched through Triton's own launch path
(``tuner.launch`` off), side by side.

Checks the logits match eager (bf16 tolerance), then times warm prefill (1x512) and
decode (8 sequences x 1 token over a 512-token KV cache), and prints a Markdown table
for docs/performance.md: each mode's median round, its ratio to eager's, and with
``--rounds`` > 1 the median of the per-round ratios and the ratio of the fastest rounds
(steadier on a host whose speed drifts). ``--first-call`` also times the first prefill in fresh
processes (run ``gems-pretune workloads/llama7b.yaml`` first for the pretuned-DB figure).

    python benchmarks/bench_llama.py [--layers 2] [--iters 20] [--rounds 1] [--first-call] [--no-triton-launch]
                                      [--inference-mode]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import torch


def build(layers: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
                      num_hidden_layers=layers, vocab_size=32000, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


def _prefill(model, ids):
    return model(input_ids=ids, use_cache=True)


def _decode_setup(model, batch=8, ctx=512):
    ids = torch.randint(0, 32000, (batch, ctx), device="cuda")
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    return out.past_key_values, torch.randint(0, 32000, (batch, 1), device="cuda")


def decode_step(model, cache, tok, ctx: int = 512):
    """One decode step of ``tok`` over ``cache``, repeatable: each step appends a token, so
    the cache is first cut back to ``ctx`` and every step decodes from the same length."""

    def decode():
        extra = cache.get_seq_length() - ctx
        if extra > 0:
            cache.crop(-extra)  # a negative count removes that many (positive counts are deprecated)
        return model(input_ids=tok, past_key_values=cache, use_cache=True)

    return decode


def timed(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def measure(model, ids: torch.Tensor, decode_from, iters: int, inference: bool = False):
    """Warm prefill and decode times, and the prefill's logits. ``decode_from``: the
    (KV cache of 8 x 512 tokens, next tokens) every mode decodes from; made once, in
    eager mode, so its 8 x 512 prefill is not among the shapes under test. ``inference``:
    under torch.inference_mode (which skips the Autograd keys) instead of no_grad."""
    cache, tok = decode_from
    with torch.inference_mode() if inference else torch.no_grad():
        prefill_ms = timed(lambda: _prefill(model, ids), iters)
        decode_ms = timed(decode_step(model, cache, tok), iters)
        logits = model(input_ids=ids).logits.float()
    return prefill_ms, decode_ms, logits


def first_call(mode: str, layers: int) -> float:
    code = f"""
import time, torch, flag_gems, sys
sys.path.insert(0, 'benchmarks')
from bench_llama import build
m = build({layers}); ids = torch.randint(0, 32000, (1, 512), device='cuda'); torch.cuda.synchronize()
if {mode!r} == 'patches': flag_gems.apply_gems_patches_to_transformers()
if {mode!r} != 'eager': flag_gems.enable()
t = time.perf_counter()
with torch.no_grad(): m(input_ids=ids)
torch.cuda.synchronize(); print(time.perf_counter() - t)
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1]) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--first-call", action="store_true")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--no-triton-launch", action="store_true", help="skip the modes that launch through Triton's own path")
    ap.add_argument("--inference-mode", action="store_true", help="run the steps under torch.inference_mode, not no_grad")
    args = ap.parse_args()
    import flag_gems
    import tuner
    from tuner import launch

    model = build(args.layers)
    # one prompt for every mode: the logits are compared across modes
    ids = torch.randint(0, 32000, (1, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    decode_from = _decode_setup(model)
    rows: dict[str, list] = {}

    def run(name: str) -> None:
        rows.setdefault(name, []).append(measure(model, ids, decode_from, args.iters, args.inference_mode))

    # --rounds > 1 interleaves the modes, round after round: on a host whose speed drifts,
    # each mode then samples the same stretches of time (the table shows the median round)
    for _ in range(args.rounds):
        run("torch eager")
        flag_gems.enable()
        run("flag_gems enable()")
        if not args.no_triton_launch:
            launch.set_enabled(False)  # side by side: every kernel through Triton's own launch path
            run("enable(), Triton's launch")
            launch.set_enabled(None)
        flag_gems.apply_gems_patches_to_transformers()
        run("enable() + patches")
        if not args.no_triton_launch:
            launch.set_enabled(False)
            run("enable() + patches, Triton's launch")
            launch.set_enabled(None)
        flag_gems.revert_transformers_patches()
        flag_gems.disable()
    spread = {name: " ".join(f"{r[0]:.2f}/{r[1]:.2f}" for r in runs) for name, runs in rows.items()}
    # two estimates that a drifting host disturbs less than the ratio of medians: the
    # median of each round's ratio (the modes of a round ran back to back) and the ratio
    # of each mode's fastest round (noise only ever slows a round down)
    eager_runs = rows["torch eager"]
    paired = {name: tuple(statistics.median(r[i] / e[i] for r, e in zip(runs, eager_runs)) for i in (0, 1))
              for name, runs in rows.items()}
    best = {name: tuple(min(r[i] for r in runs) / min(e[i] for e in eager_runs) for i in (0, 1)) for name, runs in rows.items()}
    rows = {name: (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[-1][2])
            for name, runs in rows.items()}

    ref = rows["torch eager"][2]
    print(f"| {torch.cuda.get_device_name()} | prefill 1x512 (ms) | decode 8x1 (ms) | vs eager (prefill / decode) "
          "| median of round ratios | fastest rounds | max abs dlogit |")
    print("|---|---|---|---|---|---|---|")
    for name, (p, d, logits) in rows.items():
        diff = (logits - ref).abs().max().item()
        print(f"| {name} | {p:.2f} | {d:.2f} | {p / rows['torch eager'][0]:.2f}x / {d / rows['torch eager'][1]:.2f}x "
              f"| {paired[name][0]:.2f}x / {paired[name][1]:.2f}x | {best[name][0]:.2f}x / {best[name][1]:.2f}x | {diff:.3g} |")
    if args.rounds > 1:
        print("each round, prefill/decode ms: " + "; ".join(f"{k}: {v}" for k, v in spread.items()))
    print("tuner stats:", tuner.stats())
    if args.first_call:
        res = {m: round(first_call(m, args.layers), 1) for m in ("eager", "plain", "patches")}
        print("first prefill in a fresh process (ms):", json.dumps(res))
    for name, (_, _, logits) in rows.items():  # after every figure is out
        torch.testing.assert_close(logits, ref, rtol=1.6e-2, atol=0.1 * ref.abs().max().item(), msg=lambda m: f"{name}: {m}")


if __name__ == "__main__":
    main()
