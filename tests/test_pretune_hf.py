"""gems-pretune for HF transformers at interpreter scale: the keys derived from a model
workload (``style: [hf]``) are exactly the keys a tiny LlamaForCausalLM (random weights, no
download) requests under ``flag_gems.use_gems()`` -- prefill, a decode step over a KV cache
(eager and SDPA attention), a training step's forward and backward -- and after pretuning
the model runs with ``FLAGGEMS_AUTOTUNE=never`` without a miss or a benchmark. A dry run
lists the same keys, launching and writing nothing."""
from __future__ import annotations

import pytest
import torch

import flag_gems
import tuner
from tests.helpers import DEVICE, count_kernels
from tests.test_pretune import env, fresh_db, stored_keys  # noqa: F401  (env is a fixture)
from tuner import pretune as pt
from tuner import workload as wl
from tuner.libtuner import clear_caches, resolve_hook
from tuner.store import set_default_store

transformers = pytest.importorskip("transformers")


def workload(dtype: str, attention: str, kv_heads: int, backward: bool = False, style: str = "[hf]") -> wl.Workload:
    # every token count of the ranges is some step's batch * seq (so the derived token-wise
    # keys are all reachable); batch 1 and 2 reach both layouts of HF's [batch, heads, seq, d]
    decode = "" if backward else "decode: [1, 2], "
    return wl.load_text(f"""
name: hf-tiny
model: {{hidden: 64, intermediate: 96, heads: 4, kv_heads: {kv_heads}, head_dim: 16, vocab: 128, dtype: {dtype},
        style: {style}, attention: {attention}}}
tokens: {{prefill: [3, 6], {decode}attention_seq: [1, 5], batch: [1, 2]}}
backward: {str(backward).lower()}
""", "hf-tiny.yaml")


def hf_model(m: wl.ModelSpec) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(
        vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=m.intermediate, num_hidden_layers=1,
        num_attention_heads=m.heads, num_key_value_heads=m.kv_heads, head_dim=m.head_dim,
        max_position_embeddings=64, rms_norm_eps=m.rms_eps,
    )
    cfg._attn_implementation = m.attention
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(DEVICE, getattr(torch, m.dtype)).eval()


def all_steps(tk: wl.Tokens) -> list[tuple[str, int, int]]:
    """Every step the workload's ranges allow: (prefill, batch, seq), (decode, batch, kv)."""
    seq = tk.seq()
    out = [("prefill", b, s) for b in range(tk.batch.lo, tk.batch.hi + 1) for s in range(seq.lo, seq.hi + 1)
           if tk.prefill.lo <= b * s <= tk.prefill.hi]
    if tk.decode is not None:
        out += [("decode", b, kv) for b in range(tk.decode.lo, tk.decode.hi + 1) for kv in range(max(2, seq.lo), seq.hi + 1)]
    return out


def requested_keys(model: torch.nn.Module, m: wl.ModelSpec, steps: list, train: bool, resolve: bool = True) -> set[tuple[str, str]]:
    """The keys the model requests over ``steps``, resolved the normal way (the store and
    the miss policy), or with ``resolve=False`` answered by the kernels' defaults. A decode
    step's cache is built by a prefill whose keys are neither recorded nor looked up."""
    seen: set[tuple[str, str]] = set()
    recording = [True]

    def hook(t, key, args, kwargs, grid):
        if not recording[0]:
            return dict(t.default)
        seen.add((t.name, t.key_json(key)))
        return None if resolve else dict(t.default)

    g = torch.Generator().manual_seed(1)
    with resolve_hook(hook):
        for phase, b, n in steps:
            ids = torch.randint(0, m.vocab, (b, n), generator=g).to(DEVICE)
            if train:  # a training step of two micro-batches: the second accumulates the gradients
                model.train()
                model.zero_grad(set_to_none=True)
                with flag_gems.use_gems():
                    for _ in range(2):
                        model(input_ids=ids, labels=ids).loss.backward()
            elif phase == "prefill":
                with torch.no_grad(), flag_gems.use_gems():
                    model(input_ids=ids, use_cache=True)
            else:  # one new token over a cache of n - 1
                recording[0] = False
                with torch.no_grad(), flag_gems.use_gems():
                    cache = model(input_ids=ids[:, :-1], use_cache=True).past_key_values
                clear_caches()
                recording[0] = True
                with torch.no_grad(), flag_gems.use_gems():
                    model(input_ids=ids[:, -1:], past_key_values=cache, use_cache=True)
    return seen


def check_derived_equal_requested(w: wl.Workload, env, tmp_path, monkeypatch, train: bool = False) -> None:  # noqa: F811
    jobs = wl.expand(w)
    # what pretune stores for the workload alone
    fresh_db(tmp_path, "pretuned.db", monkeypatch)
    env("miss")
    s = pt.run_jobs(jobs, progress=False)
    assert s.jobs_failed == 0, s.errors
    derived = stored_keys()
    # what the model requests, in a fresh "process" that must not miss or benchmark
    set_default_store(None)
    tuner.clear_caches()
    tuner.reset_stats()
    env("never")
    model = hf_model(w.model)
    steps = [st for st in all_steps(w.tokens) if not train or st[0] == "prefill"]
    requested = requested_keys(model, w.model, steps, train)
    st = tuner.stats()
    assert requested - derived == set(), "requested but not derived"
    assert derived - requested == set(), "derived but never requested"
    assert (st["misses"], st["benchmarks_run"]) == (0, 0)
    # a dry run lists the same keys, launching nothing
    with count_kernels() as launched:
        dry = pt.dry_run(jobs)
    assert set(dry.distinct()) == derived and sum(launched.values()) == 0
    assert all(j.error is None for j in dry.jobs) and dry.estimate_s() > 0


@pytest.mark.parametrize("dtype,attention,kv_heads", [("bfloat16", "eager", 2), ("float32", "sdpa", 4)])
def test_inference_keys_equal_requested(env, tmp_path, monkeypatch, dtype, attention, kv_heads):  # noqa: F811
    """Prefill of [batch, seq] and decode of [batch, 1] over a KV cache: eager attention in
    bf16 with GQA (the float32 softmax and its casts, repeat_kv), SDPA in float32 without."""
    check_derived_equal_requested(workload(dtype, attention, kv_heads), env, tmp_path, monkeypatch)


def test_training_keys_equal_requested(env, tmp_path, monkeypatch):  # noqa: F811
    """A training step (loss and backward, gradients accumulated over two micro-batches):
    the gradient GEMMs, the norm's, activation's, attention's, loss's and embedding's
    backward kernels."""
    w = workload("bfloat16", "eager", 2, backward=True)
    check_derived_equal_requested(w, env, tmp_path, monkeypatch, train=True)
    kernels = {k for j in pt.dry_run(wl.expand(w)).jobs for k in (x.kernel for x in j.keys)}
    for name in ("silu_backward", "_softmax_bwd", "_nll_bwd", "embedding_bwd", "_reduce_kernel:inner"):
        assert any(name in k for k in kernels), name


@pytest.mark.parametrize("dtype,attention,kv_heads,train", [
    ("bfloat16", "eager", 2, False), ("float16", "eager", 4, False), ("float32", "sdpa", 2, False),
    ("bfloat16", "sdpa", 4, True), ("float16", "sdpa", 2, True), ("float32", "eager", 4, True),
])
def test_dry_run_keys_equal_model_keys(dtype, attention, kv_heads, train):
    """Keys only, both sides launch-free (fast, also on a GPU, where dtypes take other
    paths: float16 softmax as half_to_float, SDPA's own kernels): the dry run of the
    workload lists exactly the keys the model's steps request."""
    w = workload(dtype, attention, kv_heads, backward=train)
    dry = pt.dry_run(wl.expand(w))
    assert all(j.error is None for j in dry.jobs), [j.error for j in dry.jobs if j.error]
    model = hf_model(w.model)
    steps = [st for st in all_steps(w.tokens) if not train or st[0] == "prefill"]
    with pt.no_launches():
        requested = requested_keys(model, w.model, steps, train, resolve=False)
    derived = set(dry.distinct())
    assert requested - derived == set(), "requested but not derived"
    assert derived - requested == set(), "derived but never requested"


@pytest.mark.parametrize("dtype,kv_heads,merge_max", [("bfloat16", 2, 1024), ("float32", 4, 1024), ("bfloat16", 2, 4)])
def test_patched_model_keys_within_hf_and_vllm_styles(dtype, kv_heads, merge_max, monkeypatch):
    """With the transformers patches (merged q/k/v and gate/up, one-pass norm, one-launch
    rotary and rotary tables, the fused post-attention add) every key the model requests is
    one the union of the hf and vllm styles derives: pretuning ``style: [hf, vllm]`` covers
    a patched model with SDPA attention, also for prefills too long to merge q/k/v
    (``merge_max`` 4 makes the workload's longer prefills such: q and k rotate apart).
    (Eager attention also copies q, a block of the merged rotary output, for its matmul:
    a pointwise copy key no style derives.)"""
    from flag_gems.patches import transformers as hf_patches

    monkeypatch.setattr(hf_patches, "MERGE_QKV_MAX_TOKENS", merge_max)
    attention = "sdpa"
    w = workload(dtype, attention, kv_heads, style="[hf, vllm]")
    dry = pt.dry_run(wl.expand(w))
    assert all(j.error is None for j in dry.jobs), [j.error for j in dry.jobs if j.error]
    model = hf_model(w.model)
    flag_gems.apply_gems_patches_to_transformers()
    try:
        with pt.no_launches():
            requested = requested_keys(model, w.model, all_steps(w.tokens), False, resolve=False)
    finally:
        flag_gems.revert_transformers_patches()
    kernels = {k for k, _ in requested}
    assert any("rotary_kernel" in k for k in kernels) and any("gated_act" in k for k in kernels)
    assert requested - set(dry.distinct()) == set(), "requested but not derived"
