"""HF Llama with and without flag_gems: a Llama built from a LlamaConfig with random
weights (nothing is downloaded), greedy generation three ways -- torch eager, plain
``flag_gems.enable()``, and enable() plus ``apply_gems_patches_to_transformers()`` --
compared within bf16 tolerance.

    python examples/llama_hf.py                  # GPU: bf16, a small model
    TRITON_INTERPRET=1 python examples/llama_hf.py --tiny   # CPU: interpreter, float32
"""
from __future__ import annotations

import argparse
import contextlib
import logging

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import flag_gems


def build(tiny: bool, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    torch.manual_seed(0)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                vocab_size=128) if tiny else \
        dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=4, num_attention_heads=16, num_key_value_heads=8,
             vocab_size=32000)
    cfg = LlamaConfig(max_position_embeddings=256, **size)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    return model


def generate(model, ids, new_tokens):
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=0)
    return out.sequences, torch.stack(out.logits, 1).float()


def forced_logits(model, seq, gems: bool = False, patched: bool = False) -> torch.Tensor:
    """The logits of every position of ``seq`` in one forward pass (teacher forcing)."""
    if patched:
        flag_gems.apply_gems_patches_to_transformers()
    try:
        with torch.no_grad(), (flag_gems.use_gems() if gems else contextlib.nullcontext()):
            return model(seq).logits.float()
    finally:
        if patched:
            flag_gems.revert_transformers_patches()


def check_tokens(seq, ref_seq, ref_logits, prompt: int, tol: float) -> None:
    """``seq`` equals ``ref_seq`` up to its first difference, where eager's choice must
    have been a near tie (its top two logits within ``tol``)."""
    diff = (seq[prompt:] != ref_seq[prompt:]).nonzero()
    if len(diff):
        step = diff[0].item()
        top2 = ref_logits[step].topk(2).values
        assert top2[0] - top2[1] <= tol, f"token {step} differs from eager's, which led by {top2[0] - top2[1]:.3g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="1 layer, hidden 64 (for the CPU interpreter)")
    ap.add_argument("--new-tokens", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build(args.tiny or device == "cpu", device, dtype)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1)).to(device)

    ref_seq, ref_logits = generate(model, ids, args.new_tokens)
    with flag_gems.use_gems():
        seq_plain, logits_plain = generate(model, ids, args.new_tokens)
    flag_gems.apply_gems_patches_to_transformers(verbose=True)
    try:
        with flag_gems.use_gems():
            seq_patched, logits_patched = generate(model, ids, args.new_tokens)
    finally:
        flag_gems.revert_transformers_patches()

    # bf16: one rounding of the logits' scale per layer. Every step's logits are compared
    # on the same prefix (eager's sequence, teacher-forced), and the generated tokens must
    # equal eager's up to a step where eager's top two logits are within tolerance (a tie
    # that rounding may break either way).
    rtol, atol = (1.6e-2, 5e-2) if dtype == torch.bfloat16 else (1e-4, 1e-4)
    ref_forced = forced_logits(model, ref_seq)
    for name, seq, patched in (("enable()", seq_plain, False), ("enable() + patches", seq_patched, True)):
        forced = forced_logits(model, ref_seq, gems=True, patched=patched)
        torch.testing.assert_close(forced, ref_forced, rtol=rtol, atol=atol)
        for b in range(seq.shape[0]):
            check_tokens(seq[b], ref_seq[b], ref_logits[b], ids.shape[1], atol + rtol * ref_logits[b].abs().max().item())
        same = (seq == ref_seq).float().mean().item()
        print(f"{name:20s} logits of every step match eager's; tokens equal to eager: {same:.0%}; "
              f"max |dlogit| {(forced - ref_forced).abs().max().item():.3g}")
    print("eager   :", ref_seq[0, ids.shape[1]:].tolist())
    print("patched :", seq_patched[0, ids.shape[1]:].tolist())


if __name__ == "__main__":
    main()
