"""gems-pretune at interpreter scale: the keys pretune stores for workloads/smoke.yaml are
exactly the keys a tiny Llama-like layer requests under flag_gems (0 misses after); resume
after an interruption; the --from-misses loop; the captured-workload loop; the CLI."""
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import flag_gems
import tuner
from flag_gems.tuning import vllm_sample
from tuner import bench, settings
from tuner import pretune as pt
from tuner import workload as wl
from tuner.store import default_store, set_default_store
from tests.helpers import DEVICE

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "workloads" / "smoke.yaml"


def fake_time(req):
    """Deterministic and launch-free: a config's time is a hash of it and the key."""
    h = zlib.crc32(json.dumps([req.config, [str(k) for k in req.key]], sort_keys=True).encode())
    ms = 1.0 + (h % 1000) / 1000
    return ms, ms * 0.9, ms * 1.1


@pytest.fixture
def env(isolated_store, monkeypatch):
    def policy(name):
        monkeypatch.setenv("FLAGGEMS_AUTOTUNE", name)
        settings.reload()

    bench.set_timer(fake_time)
    yield policy
    bench.set_timer(None)


def sql():
    return default_store().layers[1]


def stored_keys():
    return {(r.identity.kernel, r.identity.key) for r in sql().records()}


def fresh_db(tmp_path, name, monkeypatch):
    monkeypatch.setenv("FLAGGEMS_TUNING_DB", str(tmp_path / name))
    settings.reload()
    set_default_store(None)
    tuner.clear_caches()
    tuner.reset_stats()


# -- a tiny Llama-like model matching smoke.yaml ---------------------------------------------
M = wl.load(SMOKE).model


def weights(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    r = lambda *s: (torch.randn(*s, generator=g) * 0.1).to(dtype).to(DEVICE)  # noqa: E731
    hd, q, kv = M.head_dim, M.heads * M.head_dim, M.kv_heads * M.head_dim
    return {
        "emb": r(M.vocab, M.hidden), "norm": r(M.hidden), "wq": r(q, M.hidden), "wk": r(kv, M.hidden), "wv": r(kv, M.hidden),
        "qkv": r(q + 2 * kv, M.hidden), "wo": r(M.hidden, q), "gate_up": r(2 * M.intermediate, M.hidden),
        "down": r(M.hidden, M.intermediate), "head": r(M.vocab, M.hidden), "cos": r(64, hd // 2), "sin": r(64, hd // 2),
    }


def layer(w, t):
    """A vLLM-style layer (smoke.yaml's style): embedding, norm, merged qkv, rope, o-proj,
    fused add+norm, merged gate_up, silu_and_mul, down, final fused add+norm, lm_head, the
    sampler (greedy and random). The
    attention (vLLM's flash kernels) runs in torch outside flag_gems. The fused functions
    are called outside ``use_gems()``: inside it, the Triton interpreter's own copy-back of
    their arguments would dispatch to flag_gems' copy_ (an interpreter-only artifact)."""
    from flag_gems.fused import apply_rotary_pos_emb, fused_add_rms_norm, rms_norm, silu_and_mul

    H, KV, hd = M.heads, M.kv_heads, M.head_dim
    ids = torch.randint(0, M.vocab, (t,), device=DEVICE)
    with flag_gems.use_gems():
        x = F.embedding(ids, w["emb"])
    h = rms_norm(x, w["norm"], M.rms_eps)
    with flag_gems.use_gems():
        qkv = F.linear(h, w["qkv"])
    q, k, v = qkv.split([H * hd, KV * hd, KV * hd], dim=-1)
    q, k = apply_rotary_pos_emb(q.reshape(t, H, hd), k.reshape(t, KV, hd), w["cos"][:t], w["sin"][:t])
    kk, vv = k.repeat_interleave(H // KV, dim=1), v.reshape(t, KV, hd).repeat_interleave(H // KV, dim=1)
    p = torch.softmax(torch.einsum("thd,shd->hts", q, kk) / hd**0.5, dim=-1)
    attn = torch.einsum("hts,shd->thd", p, vv).reshape(t, H * hd)
    with flag_gems.use_gems():
        o = F.linear(attn.contiguous(), w["wo"])
    hn, res = fused_add_rms_norm(o.clone(), x.clone(), w["norm"], M.rms_eps)
    with flag_gems.use_gems():
        gu = F.linear(hn, w["gate_up"])
    act = silu_and_mul(gu)
    with flag_gems.use_gems():
        y = F.linear(act, w["down"])
    y, _ = fused_add_rms_norm(y, res, w["norm"], M.rms_eps)
    with flag_gems.use_gems():
        logits = F.linear(y, w["head"])
    temperature = torch.rand(t, device=DEVICE) + 0.5
    with flag_gems.use_gems():
        return vllm_sample(logits, temperature)  # vLLM's native sampler


def token_counts():
    tk = wl.load(SMOKE).tokens
    return [*range(tk.prefill.lo, tk.prefill.hi + 1), *range(tk.decode.lo, tk.decode.hi + 1)]


def test_smoke_keys_equal_requested_keys_and_zero_misses_after(env, tmp_path, monkeypatch):
    w = weights()
    # what the model requests: every token count of the workload's ranges, tuned online
    fresh_db(tmp_path, "online.db", monkeypatch)
    env("miss")
    for t in token_counts():
        layer(w, t)
    requested = stored_keys()
    # what pretune derives from the workload alone
    fresh_db(tmp_path, "pretuned.db", monkeypatch)
    s = pt.run_jobs(wl.load_jobs([SMOKE]), progress=False)
    assert s.jobs_failed == 0, s.errors
    got = stored_keys()
    assert got == requested
    assert {t.kernel for t in s.tuned} >= {"flag_gems.ops.mm._mm_kernel", "flag_gems.fused.rms_norm.rms_norm_fwd_kernel"}
    assert all(r.source == "pretune" for r in sql().records())
    # a fresh "process": never policy, no benchmark, no miss
    set_default_store(None)
    tuner.clear_caches()
    tuner.reset_stats()
    env("never")
    for t in token_counts():
        layer(w, t)
    st = tuner.stats()
    assert (st["misses"], st["benchmarks_run"]) == (0, 0)
    # rerun: everything already tuned, nothing benchmarked
    s2 = pt.run_jobs(wl.load_jobs([SMOKE]), progress=False)
    assert (len(s2.tuned), s2.jobs_tuned, s2.jobs_skipped) == (0, 0, s2.jobs)


class Boom(KeyboardInterrupt):
    pass


def test_resume_after_interruption_tunes_only_the_rest(env, tmp_path, monkeypatch):
    jobs = wl.load_jobs([SMOKE])
    fresh_db(tmp_path, "full.db", monkeypatch)
    full = pt.run_jobs(jobs, progress=False)
    all_keys = stored_keys()
    assert len(full.tuned) == len(all_keys) > 5

    fresh_db(tmp_path, "resume.db", monkeypatch)
    calls = {"n": 0}

    def dying(req):
        calls["n"] += 1
        if calls["n"] > 30:  # Ctrl-C in the middle of some key's benchmark
            raise Boom()
        return fake_time(req)

    bench.set_timer(dying)
    with pytest.raises(KeyboardInterrupt):
        pt.run_jobs(jobs, progress=False)
    first = stored_keys()
    assert 0 < len(first) < len(all_keys)
    bench.set_timer(fake_time)
    again = pt.run_jobs(jobs, progress=False)
    assert {(t.kernel, t.key) for t in again.tuned} == all_keys - first  # only the rest
    assert stored_keys() == all_keys


def test_force_retunes_each_key_once(env, tmp_path, monkeypatch):
    jobs = wl.load_jobs([SMOKE])
    fresh_db(tmp_path, "f.db", monkeypatch)
    first = pt.run_jobs(jobs, progress=False)
    forced = pt.run_jobs(jobs, progress=False, force=True)
    assert sorted((t.kernel, t.key) for t in forced.tuned) == sorted((t.kernel, t.key) for t in first.tuned)


def aten_model(w, t, **scope):
    """Only aten ops (the recorder sees aten calls, not direct fused-function calls)."""
    ids = torch.randint(0, M.vocab, (t,), device=DEVICE)
    with flag_gems.use_gems(**scope):
        x = F.embedding(ids, w["emb"])
        q = F.linear(x, w["wq"])
        p = torch.softmax(q.view(t, M.heads, M.head_dim), dim=-1)
        return F.linear(p.reshape(t, -1) + q, w["wo"]) * 2.0


def test_from_misses_loop(env, tmp_path, monkeypatch):
    from flag_gems.fused import apply_rotary_pos_emb, rms_norm, silu_and_mul

    w = weights()
    fresh_db(tmp_path, "m.db", monkeypatch)
    env("never")

    def run():
        for t in (3, 9):
            aten_model(w, t)
            rms_norm(torch.randn(t, M.hidden, device=DEVICE), w["norm"])
            silu_and_mul(torch.randn(t, 2 * M.intermediate, device=DEVICE))
            q, k = torch.randn(t, 4, 16, device=DEVICE), torch.randn(t, 2, 16, device=DEVICE)
            apply_rotary_pos_emb(q, k, torch.randn(t, 8, device=DEVICE), torch.randn(t, 8, device=DEVICE))

    run()
    missed = tuner.stats()["misses"]
    assert missed > 0 and pt.remaining_misses() == missed
    jobs, unreplayable = pt.jobs_from_misses()
    assert unreplayable == [] and jobs
    s = pt.run_jobs(jobs, progress=False)
    assert s.jobs_failed == 0, s.errors
    left = [(m.identity.kernel, m.identity.key, m.raw_args) for m in sql().misses()]
    assert left == []
    set_default_store(None)
    tuner.clear_caches()
    tuner.reset_stats()
    env("never")
    run()
    assert tuner.stats()["misses"] == 0


def test_from_misses_replays_sort_unique_nonzero_pad_nll(env, tmp_path, monkeypatch):
    """Misses of the merge sort (a row over 4096), unique's and nonzero's count kernels,
    the pad kernels and the nll kernels replay as aten calls that request the same keys."""
    fresh_db(tmp_path, "s.db", monkeypatch)
    env("never")

    def run():
        with flag_gems.use_gems():
            torch.sort(torch.randn(1, 4100, device=DEVICE))  # over 4096: chunks, then merges
            torch.unique(torch.randint(0, 9, (300,), device=DEVICE))
            torch.nonzero(torch.randn(7, 30, device=DEVICE))
            F.pad(torch.randn(2, 3, 40, device=DEVICE), (2, 3), mode="replicate")
            # the nll tuners (mean, weighted "none", 2-d) and the pad backward, in bf16
            x = torch.randn(6, 5, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
            t = torch.randint(0, 5, (6,), device=DEVICE)
            F.nll_loss(x, t).backward()
            w = torch.rand(5, device=DEVICE, dtype=torch.bfloat16)
            F.nll_loss(x, t, weight=w, reduction="none").sum().backward()
            x4 = torch.randn(2, 5, 3, 4, device=DEVICE, requires_grad=True)
            F.nll_loss(x4, torch.randint(0, 5, (2, 3, 4), device=DEVICE)).backward()
            xp = torch.randn(2, 3, 40, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
            F.pad(xp, (2, 3), mode="replicate").sum().backward()

    def run_dim_ops():  # reductions, cat, layer_norm, index_select
        x = torch.randn(6, 40, device=DEVICE, dtype=torch.bfloat16)
        with flag_gems.use_gems():
            x.float().mean(-1, keepdim=True)
            x.sum(0)
            x.sum(-1, dtype=torch.float32)
            x.argmax(-1)
            torch.randn(300, 5000, device=DEVICE).argmax(0)
            x.cumsum(-1)
            torch.cat([x, x[:3]], 0)
            F.layer_norm(x, (40,), torch.randn(40, device=DEVICE, dtype=torch.bfloat16),
                         torch.randn(40, device=DEVICE, dtype=torch.bfloat16))
            torch.index_select(x, 1, torch.tensor([1, 2], device=DEVICE))  # short rows: the flat kernel
            torch.index_select(x, 0, torch.tensor([1, 2], device=DEVICE))  # the row kernel

    run()
    run_dim_ops()
    kernels = {"sort_merge_kernel", "unique_count_kernel", "nonzero_count_kernel", "pad_kernel", "pad_backward_kernel",
               "_nll_fwd_kernel", "_nll_finish_kernel", "_nll_bwd_kernel", "_reduce_kernel:rows", "_reduce_kernel:inner",
               "_arg_reduce_kernel:rows_short", "_arg_reduce_kernel:inner", "_cumsum_kernel:rows_short", "cat_kernel",
               "layer_norm_fwd_kernel", "index_select_kernel", "index_select_rows_kernel"}
    assert kernels <= {m.identity.kernel.rsplit(".", 1)[-1] for m in sql().misses()}
    jobs, unreplayable = pt.jobs_from_misses()
    assert not [u for u in unreplayable if u["kernel"].rsplit(".", 1)[-1] in kernels], unreplayable
    s = pt.run_jobs(jobs, progress=False)
    assert s.jobs_failed == 0, s.errors
    left = {m.identity.kernel.rsplit(".", 1)[-1] for m in sql().misses()}
    assert not left & kernels, left


def test_capture_loop(env, tmp_path, monkeypatch):
    from flag_gems.tuning import capture_workload

    w = weights()
    rec = tmp_path / "rec.jsonl"
    fresh_db(tmp_path, "c.db", monkeypatch)
    env("never")
    for t in (2, 6):  # (a nested use_gems() without record=True would stop the recording)
        aten_model(w, t, record=True, path=rec)
    assert tuner.stats()["misses"] > 0
    out = tmp_path / "captured.yaml"
    n = capture_workload(rec, out)
    assert n > 0
    jobs = wl.load_jobs([out])  # a workload gems-pretune accepts
    s = pt.run_jobs(jobs, progress=False)
    assert s.jobs_failed == 0, s.errors
    set_default_store(None)
    tuner.clear_caches()
    tuner.reset_stats()
    env("never")
    for t in (2, 6):
        aten_model(w, t)
    assert tuner.stats()["misses"] == 0


def cli(*args, env_extra=None, timeout=120):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "tuner.cli.pretune", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_cli_bad_workload_tunes_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel:\n  hidden: 32\n  intermediate: 48\n  heads: 2\n  kv_heads: 1\n  head_dim: 16\n  vocab: oops\n"
                   "tokens: {decode: [1, 2]}\n")
    db = tmp_path / "t.db"
    r = cli(str(SMOKE), str(bad), "--db", str(db), "--no-progress")
    assert r.returncode == 2
    assert f"{bad}:8: model.vocab" in r.stderr
    assert not db.exists()


def test_cli_server_and_dry_run(tmp_path):
    """--server's option checks and --dry-run; the shared queue itself runs in
    tests/tunerd/test_jobs.py::test_cli_pretune_server_smoke against a real tunerd."""
    r = cli(str(SMOKE), "--server", "http://127.0.0.1:9", "--devices", "0,1", "--no-progress")
    assert r.returncode == 2 and "--devices" in r.stderr
    r = cli(str(SMOKE), "--token-file", str(tmp_path / "token"), "--no-progress")
    assert r.returncode == 2 and "--token-file needs --server" in r.stderr
    r = cli(str(SMOKE), "--server", "http://127.0.0.1:9", "--token-file", str(tmp_path / "missing"), "--no-progress")
    assert r.returncode == 2 and "--token-file" in r.stderr
    r = cli(str(SMOKE), "--server", "http://127.0.0.1:9", "--dry-run")  # lists the jobs, contacts nobody
    assert r.returncode == 0 and "distinct keys" in r.stdout
    # no GPU, no interpreter asked for: the dry run launches nothing, so it needs neither
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "tuner.cli.pretune", str(SMOKE), "--dry-run", "--db", str(tmp_path / "t.db"),
                        "--report", str(tmp_path / "dry.json")], capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr
    assert "linear([5, 32] x [64, 32], float32)" in r.stdout  # the merged qkv projection
    assert "flag_gems.ops.mm._mm_kernel [" in r.stdout and "configs" in r.stdout and "GPU time ~" in r.stdout
    report = json.loads((tmp_path / "dry.json").read_text())
    assert report["keys"] > 5 and report["estimate_s"] > 0 and all(j["error"] is None for j in report["jobs"])
    assert not (tmp_path / "t.db").exists()


def test_cli_smoke_real_timer_under_a_minute(tmp_path):
    """The real (wall-clock, interpreter) timer, a JSON report, then a no-op rerun."""
    db, rep = tmp_path / "t.db", tmp_path / "r.json"
    r = cli(str(SMOKE), "--db", str(db), "--report", str(rep), "--no-progress", timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads(rep.read_text())
    assert report["keys_tuned"] > 5 and report["jobs_failed"] == 0
    assert any(k["kernel"] == "flag_gems.ops.mm._mm_kernel" for k in report["kernels"])
    timeline = report["timeline"]  # the jobs in order, one after another
    assert [e["job"] for e in timeline] == list(range(report["jobs"]))
    assert all(a["start_s"] + a["run_s"] <= b["start_s"] + 0.01 for a, b in zip(timeline, timeline[1:]))
    assert sum(e["benchmarks"] for e in timeline) == report["keys_tuned"]
    assert sum(e["configs_timed"] for e in timeline) >= report["keys_tuned"]
    # the timeline replays through the multi-GPU hand-out policies (benchmarks/replay_dispatch.py)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    replay = [sys.executable, "benchmarks/replay_dispatch.py", str(rep)]
    sim = subprocess.run([*replay, str(SMOKE)], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert sim.returncode == 0, sim.stderr[-2000:]
    assert "| in order, to a free device |" in sim.stdout and "| Dispatch |" in sim.stdout
    other = subprocess.run([*replay, str(ROOT / "workloads" / "llama7b.yaml")], capture_output=True, text=True,
                           timeout=60, cwd=ROOT, env=env)
    assert other.returncode != 0 and "not these workloads' jobs" in other.stderr
    assert "keys tuned" in r.stdout
    r = cli(str(SMOKE), "--db", str(db), "--no-progress", timeout=60)
    assert r.returncode == 0 and "0 keys tuned" in r.stdout


def test_listed_ops_with_backward(env, tmp_path, monkeypatch):
    """Form 2 ops with ``args.backward``: the forward, then the gradients of the floating
    inputs (their backward kernels are tuned too)."""
    text = """name: bwd
ops:
  - {op: layer_norm, shapes: [[6, 48]], dtype: float32, args: {backward: true}}
  - {op: nn_rms_norm, shapes: [[6, 48]], dtype: float32, args: {backward: true}}
  - {op: gelu, shapes: [[6, 48]], dtype: float32, args: {backward: true, approximate: tanh}}
  - {op: log_softmax, shapes: [[6, 48]], dtype: float32, args: {backward: true}}
  - {op: cross_entropy, shapes: [[6, 48]], dtype: float32, args: {backward: true}}
  - {op: linear, shapes: [[6, 32], [16, 32], [16]], dtype: float32, args: {backward: true}}
"""
    p = tmp_path / "bwd.yaml"
    p.write_text(text)
    fresh_db(tmp_path, "bwd.db", monkeypatch)
    s = pt.run_jobs(wl.load_jobs([p]), progress=False)
    assert s.jobs_failed == 0, s.errors
    kernels = {t.kernel for t in s.tuned}
    for name in ("layer_norm_bwd", "rms_norm_bwd", "gelu_tanh_backward", "_softmax_bwd", "_nll_bwd", "_reduce_kernel"):
        assert any(name in k for k in kernels), (name, sorted(kernels))


def test_cli_two_devices_tune_every_key_once(tmp_path):
    """--devices 0,1 (two spawned workers; the interpreter ignores the device): the dry
    run's every key is stored once, no job fails."""
    db, rep, dry = tmp_path / "t.db", tmp_path / "r.json", tmp_path / "d.json"
    r = cli(str(SMOKE), "--dry-run", "--report", str(dry))
    assert r.returncode == 0, r.stderr[-3000:]
    r = cli(str(SMOKE), "--db", str(db), "--devices", "0,1", "--report", str(rep), "--no-progress", timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    report, planned = json.loads(rep.read_text()), json.loads(dry.read_text())
    assert report["jobs_failed"] == 0 and report["keys_tuned"] == planned["keys"]
    devs = report["devices"]  # each worker's share, and when it started and finished
    assert set(devs) == {"0", "1"} and sum(d["jobs"] for d in devs.values()) == report["jobs"]
    for d in devs.values():
        assert d["jobs"] == 0 or 0 < d["first_job_s"] <= d["done_s"] <= report["wall_s"] + 5
        assert 0 <= d["waited_s"] <= d["wall_s"]
    assert "GPU 0:" in r.stdout and "GPU 1:" in r.stdout
    timeline = report["timeline"]  # every job once, on the device that ran it
    assert sorted(e["job"] for e in timeline) == list(range(report["jobs"]))
    for dev, d in devs.items():
        mine = [e for e in timeline if e["device"] == dev]
        assert len(mine) == d["jobs"]
        assert all(d["first_job_s"] - 0.01 <= e["start_s"] <= e["start_s"] + e["run_s"] <= d["done_s"] + 0.01 for e in mine)
    assert sum(e["benchmarks"] for e in timeline) == report["keys_tuned"]  # each key benchmarked once


def test_slow_imports_start_in_the_background(env, monkeypatch):
    """HF attention jobs import transformers (seconds) on their first run: a pretune
    process starts that import in a background thread as it starts, from the run's ops
    (a device worker's come from the parent); a failing import is left to the job."""
    from flag_gems import tuning

    assert tuning.slow_imports({"hf_attention", "linear"}) == ["transformers.models.llama.modeling_llama"]
    assert tuning.slow_imports({"linear", "hf_rms_norm"}) == []

    class Prov:
        @staticmethod
        def slow_imports(ops):
            return ["json.tool", "no_such_module_here"] if "x" in ops else []

    sys.modules.pop("json.tool", None)
    t = pt.preload(Prov, {"x"})
    t.join(10)
    assert not t.is_alive() and "json.tool" in sys.modules
    assert pt.preload(Prov, {"y"}) is None

    seen = []
    monkeypatch.setattr(pt, "preload", lambda prov, ops: seen.append(set(ops)))
    pt.run_jobs([wl.Job("linear", ((3, 32), (16, 32)), "float32")], progress=False)
    pt.run_jobs([], progress=False, feed=iter([]), ops=["hf_attention"])
    assert seen == [{"linear"}, {"hf_attention"}]
