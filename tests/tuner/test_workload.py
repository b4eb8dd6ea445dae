"""Workload YAML: schema validation (good, bad with file:line:field, generated) and the
token-count expansion (one representative per reachable bucket combination)."""
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings as hsettings, strategies as st

from tuner.keys import next_power_of_2
from tuner.workload import WorkloadError, expand, load, load_text, token_counts

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
