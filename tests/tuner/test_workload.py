"""Workload YAML: schema validation (good, bad with file:line:field, generated) and the
token-count expansion (one representative per reachable bucket combination)."""
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings as hsettings, strategies as st

from tuner.keys import align32, next_power_of_2
from tuner.workload import (
    Tokens, WorkloadError, attention_terms, bucket_terms, change_points, decode_steps, expand, load, load_text, token_counts,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "workloads").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_workloads_load_and_expand(path):
    w = load(path)
    jobs = expand(w)
    assert jobs and len(jobs) == len(set(jobs))
    ops = {j.op for j in jobs}
    assert {"linear", "rms_norm", "silu_and_mul", "embedding", "rotary"} <= ops


def test_expected_shipped_set():
    names = {p.name for p in SHIPPED}
    assert {"llama7b.yaml", "llama3-8b.yaml", "qwen2.5-7b.yaml", "mixtral-8x7b.yaml", "smoke.yaml"} <= names


def test_llama7b_covers_every_gemm_m_bucket():
    jobs = expand(load(ROOT / "workloads" / "llama7b.yaml"))
    ms = {j.shapes[0][0] for j in jobs if j.op == "linear" and j.shapes[1] == (4096, 4096)}
    buckets = {next_power_of_2(m) for m in ms}
    assert buckets == {1 << i for i in range(0, 15)}  # 1 .. 16384: decode and prefill, none skipped


def test_llama7b_gemms_of_both_styles():
    """HF: separate q/k/v (N = heads*hd, kv*hd) and gate/up (N = intermediate); vLLM: merged
    qkv (N = (heads + 2*kv)*hd) and gate_up (N = 2*intermediate); o, down and lm_head."""
    jobs = expand(load(ROOT / "workloads" / "llama7b.yaml"))
    nk = {j.shapes[1] for j in jobs if j.op == "linear"}
    assert nk == {(4096, 4096), (11008, 4096), (22016, 4096), (4096, 11008), (32000, 4096), (12288, 4096)}


MODEL = "model: {hidden: 64, intermediate: 96, heads: 4, kv_heads: 2, head_dim: 16, vocab: 128%s}\n"


def small(model_extra: str = "", tokens: str = "{prefill: [3, 8], decode: [1, 4]}", extra: str = "") -> list:
    return expand(load_text("name: x\n" + MODEL % model_extra + f"tokens: {tokens}\n" + extra))


def test_style_restricts_the_derived_calls():
    both, hf, vllm = small(), small(", style: [hf]"), small(", style: [vllm]")
    ops = lambda jobs: {j.op for j in jobs}  # noqa: E731
    assert ops(hf) >= {"hf_rms_norm", "silu", "mul", "add", "hf_attention"} and not ops(hf) & {"rms_norm", "silu_and_mul", "rotary"}
    assert ops(vllm) >= {"rms_norm", "fused_add_rms_norm", "silu_and_mul", "rotary"} and not ops(vllm) & {"hf_rms_norm", "hf_attention"}
    # both: the union, and for HF with the transformers patches the rotary of q and k apart
    # (prefills too long to merge q/k/v), one job at the longest prefill
    extra = set(both) - (set(hf) | set(vllm))
    assert set(hf) | set(vllm) <= set(both) and [(j.op, j.kwargs) for j in extra] == [("rotary", {"layout": "separate"})]
    gemms = lambda jobs: {j.shapes[1] for j in jobs if j.op == "linear"}  # noqa: E731
    # vLLM: qkv (4 + 2*2) * 16 and lm_head (vocab 128), o, gate_up 2 * 96, down
    assert gemms(vllm) == {(128, 64), (64, 64), (192, 64), (64, 96)}
    # HF: q and o, k and v, gate and up, down, lm_head
    assert gemms(hf) == {(64, 64), (32, 64), (96, 64), (64, 96), (128, 64)}


def test_eager_attention_steps_cover_every_bucket():
    """Decode steps [b, 1] over kv keys: every align32 of kv (the scores GEMM's N) for every
    log bucket of b; prefill steps [b, s]: every align32 of s for each batch size."""
    jobs = small(", attention: eager, style: [hf]", "{prefill: [1, 100], decode: [1, 8], attention_seq: [1, 100], batch: [1, 3]}")
    attn = [j for j in jobs if j.op == "hf_attention"]
    assert all(j.kwargs == {"impl": "eager"} for j in attn)
    decode = {(next_power_of_2(j.shapes[0][0]), align32(j.shapes[3][2] + 1)) for j in attn if j.phase == "decode"}
    assert decode >= {(b, kv) for b in (1, 2, 4, 8) for kv in (32, 64, 96, 128)}
    prefill = {(j.shapes[0][0], align32(j.shapes[0][1])) for j in attn if j.phase == "prefill"}
    assert prefill >= {(1, 32), (1, 64), (1, 96), (1, 128), (2, 32), (2, 64), (3, 32), (3, 64)}
    assert all(j.shapes[3][2] == 0 and j.shapes[0][0] * j.shapes[0][1] <= 100 for j in attn if j.phase == "prefill")
    sdpa = [j for j in small(", style: [hf]", "{prefill: [1, 100], decode: [1, 8], attention_seq: [1, 100]}") if j.op == "hf_attention"]
    assert 0 < len(sdpa) < len(attn)  # no GEMM over kv: log buckets only


def test_backward_derives_a_training_step():
    jobs = small(", style: [hf]", "{prefill: [3, 40]}", "backward: true\n")
    train = [j for j in jobs if j.phase == "train"]
    assert {j.op for j in train} >= {"linear", "hf_rms_norm", "silu", "mul", "embedding", "hf_attention", "hf_causal_lm_loss", "add"}
    assert all(j.kwargs.get("backward") for j in train if j.op not in ("hf_causal_lm_loss", "add"))
    # dW = dY^T @ X has K = tokens (align32): every align32 bucket of the prefill range
    ks = {align32(j.shapes[0][0]) for j in train if j.op == "linear" and j.shapes[1] == (64, 64)}
    assert ks == {32, 64}
    with pytest.raises(WorkloadError, match="style hf"):
        small(", style: [vllm]", "{prefill: [3, 8]}", "backward: true\n")
    with pytest.raises(WorkloadError, match="tokens.prefill"):
        small("", "{decode: [1, 8]}", "backward: true\n")


BAD = [
    ("name: x\nmodel:\n  hidden: 64\n  intermediate: 96\n  heads: 4\n  kv_heads: 3\n  head_dim: 16\n  vocab: 128\ntokens: {decode: [1, 4]}\n",
     2, "model"),
    ("name: x\nmodel:\n  hidden: -1\n  intermediate: 96\n  heads: 4\n  kv_heads: 2\n  head_dim: 16\n  vocab: 128\ntokens: {decode: [1, 4]}\n",
     3, "model.hidden"),
    ("name: x\nops:\n  - op: linear\n    shapes: [[4, 8], [8, 8]]\n    dtype: float8\n", 5, "ops[0].dtype"),
    ("name: x\nops:\n  - op: linear\n    shapes: [[4, 8]]\n  - op: add\n    shapez: [[1]]\n", 6, "ops[1].shapez"),
    ("name: x\nmodel: {hidden: 64, intermediate: 96, heads: 4, kv_heads: 2, head_dim: 16, vocab: 128}\n"
     "tokens:\n  prefill: [9, 3]\n", 4, "tokens.prefill"),
    ("name: x\nops: [\n", 3, "YAML"),
    ("- just\n- a list\n", 1, "mapping"),
    ("name: x\nmodel:\n  hidden: 64\n  intermediate: 96\n  heads: 4\n  kv_heads: 2\n  head_dim: 16\n  vocab: 128\n"
     "  style: [hf, tgi]\ntokens: {decode: [1, 4]}\n", 9, "model.style"),
    ("name: x\nmodel: {hidden: 64, intermediate: 96, heads: 4, kv_heads: 2, head_dim: 16, vocab: 128, attention: flash}\n"
     "tokens: {decode: [1, 4]}\n", 2, "model.attention"),
]


@pytest.mark.parametrize("text,line,field", BAD)
def test_bad_workload_names_file_line_field(tmp_path, text, line, field):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(WorkloadError) as e:
        load(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}:{line}:"), msg
    assert field in msg


yaml_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 1 << 20), st.floats(allow_nan=True), st.text(max_size=8))
yaml_values = st.recursive(yaml_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12)
model_like = st.fixed_dictionaries({
    "name": st.one_of(st.text(max_size=5), st.integers()),
    "model": st.one_of(yaml_values, st.fixed_dictionaries({
        k: st.one_of(st.integers(-2, 300), yaml_scalars)
        for k in ("hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab")
    })),
    "tokens": st.one_of(yaml_values, st.fixed_dictionaries({"prefill": st.lists(st.integers(-1, 600), max_size=3), "decode": yaml_values})),
})


@hsettings(max_examples=150, deadline=None)
@given(st.one_of(yaml_values, model_like, st.fixed_dictionaries({"name": st.just("x"), "ops": yaml_values})))
def test_generated_workloads_load_or_raise_workload_error(doc):
    text = yaml.safe_dump(doc)
    try:
        w = load_text(text, "gen.yaml")
    except WorkloadError as e:
        assert str(e).startswith("gen.yaml")
        return
    for j in expand(w)[:50]:
        assert j.op


@hsettings(max_examples=80, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_loads_or_raises_workload_error(text):
    try:
        load_text(text, "t.yaml")
    except WorkloadError:
        pass


@hsettings(max_examples=200, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 3000), st.lists(st.integers(1, 5000), max_size=3))
def test_token_counts_cover_every_bucket_combination_once(lo, span, per_token):
    hi = lo + span
    cs = sorted({1, *per_token})
    reps = token_counts(lo, hi, per_token)
    assert all(lo <= t <= hi for t in reps)
    sig = lambda t: tuple(next_power_of_2(c * t) for c in cs)  # noqa: E731
    got = [sig(t) for t in reps]
    assert len(got) == len(set(got))  # one representative per combination
    if span <= 400:  # every reachable combination has a representative
        assert {sig(t) for t in range(lo, hi + 1)} == set(got)


@hsettings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(0, 300), st.lists(st.integers(1, 700), max_size=3), st.booleans())
def test_change_points_find_every_run(lo, span, per_token, align):
    hi = lo + span
    f = lambda t: (*(next_power_of_2(c * t) for c in per_token), align32(t) if align else 0)  # noqa: E731
    pts = change_points(lo, hi, f)
    assert pts[0] == lo and pts == sorted(set(pts))
    assert [f(t) for t in pts] == list(dict.fromkeys(f(t) for t in range(lo, hi + 1)))  # one per run, in order


@hsettings(max_examples=100, deadline=None)
@given(st.integers(1, 12), st.integers(0, 12), st.integers(2, 40), st.integers(0, 60),
       st.sampled_from([(4, 2, 16), (3, 1, 8), (6, 6, 4)]), st.booleans())
def test_decode_steps_find_every_combination(b_lo, b_span, x_lo, x_span, heads, eager):
    """Every bucket combination of an attention step over [b, 1] with kv keys, each once."""
    H, KV, hd = heads
    w = load_text(f"name: x\nmodel: {{hidden: 64, intermediate: 96, heads: {H}, kv_heads: {KV}, head_dim: {hd}, "
                  f"vocab: 128, attention: {'eager' if eager else 'sdpa'}}}\ntokens: {{decode: [1, 2]}}\n")
    tk = Tokens.model_validate({"decode": [b_lo, b_lo + b_span], "attention_seq": [x_lo, x_lo + x_span]})
    terms = attention_terms(w.model)
    sig = lambda b, kv: bucket_terms(terms, {"b": b, "s": 1, "kv": kv}) + ((align32(kv),) if eager else ())  # noqa: E731
    pts = decode_steps(tk, terms, eager)
    everything = {sig(b, kv) for b in range(b_lo, b_lo + b_span + 1) for kv in range(x_lo, x_lo + x_span + 1)}
    assert sorted(sig(*p) for p in pts) == sorted(everything)  # each combination once
