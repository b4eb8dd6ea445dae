"""Which flag_gems op family makes a Llama's logits differ from eager? One GPU call.

Builds bench_llama's model (2 layers, Llama-2-7B-shaped, bf16, random weights), takes
eager's prefill logits, then runs the prefill with flag_gems enabled for one op family at
a time (every other op on aten), and with every family but one, and prints the max
|dlogit| of each run against eager's tolerance (the bf16 bound bench_llama asserts).

    python benchmarks/bisect_llama.py [--layers 2] [--tokens 512] [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def families() -> dict[str, list[str]]:
    """Registered aten overloads by the flag_gems module that implements them."""
    from flag_gems import registry

    out: dict[str, list[str]] = defaultdict(list)
    for name, entry in registry.load_ops().items():
        out[entry.fn.__module__.rsplit(".", 1)[-1]].append(name)
    return dict(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=512)
    args = ap.parse_args()
    import flag_gems
    from bench_llama import build

    model = build(args.layers)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens), device="cuda", generator=None)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
    tol = 0.1 * ref.abs().max().item()
    fams = families()
    every = [n for names in fams.values() for n in names]

    def dlogit(enabled: list[str]) -> float:
        keep = set(enabled)
        with torch.no_grad(), flag_gems.use_gems(unused=[n for n in every if n not in keep]):
            out = model(input_ids=ids).logits.float()
        return (out - ref).abs().max().item()

    print(f"eager max |logit| {ref.abs().max().item():.3g}; tolerance {tol:.3g}")
    print(f"all families: {dlogit(every):.4g}")
    # which aten ops reach flag_gems in one prefill (SDPA's flash path calls none of them;
    # its math fallback calls matmul, softmax, tril, where)
    import json
    import tempfile

    log = Path(tempfile.mkdtemp()) / "ops.jsonl"
    with torch.no_grad(), flag_gems.use_gems(record=True, path=log):
        model(input_ids=ids)
    calls: dict[str, int] = defaultdict(int)
    for line in log.read_text().splitlines():
        calls[json.loads(line)["op"]] += 1
    print("ops reaching flag_gems:", dict(sorted(calls.items())))
    print("| family | only this family | all but this family |\n|---|---|---|")
    for fam, names in sorted(fams.items()):
        only, but = dlogit(names), dlogit([n for n in every if n not in set(names)])
        flag = " <-" if only > tol or but <= tol else ""
        print(f"| {fam} | {only:.4g} | {but:.4g} |{flag}")


if __name__ == "__main__":
    main()
