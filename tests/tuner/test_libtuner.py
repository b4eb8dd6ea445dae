"""LibTuner in the Triton interpreter: miss policies, key strategies, nearest-key
fallback, failing configs, counters, and cross-process reuse of a tuned DB."""
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch
import triton
import triton.language as tl

import tuner
from tuner import bench, keys, settings
from tuner.libtuner import NoConfigError
from tuner.store import default_store
from tests.helpers import DEVICE
from tests.tuner.kernels import CONFIGS, fake_time, scale, scale_kernel

BEST = {"BLOCK": 64, "num_warps": 2}


@pytest.fixture
def policy(isolated_store, monkeypatch):
    def set_policy(name):
        monkeypatch.setenv("FLAGGEMS_AUTOTUNE", name)
        settings.reload()

    bench.set_timer(fake_time)
    yield set_policy
    bench.set_timer(None)


def cfg_subset(cfg):
    return {k: cfg[k] for k in ("BLOCK", "num_warps")}


def test_large_space_is_screened_briefly_then_finalists_timed_in_full(policy):
    """Every config gets a brief round; only the FINALISTS fastest get the full warm-up
    and repetitions, and the winner is chosen on full timings only."""
    from tuner.libtuner import FINALISTS

    seen, budget = [], []

    def timer(req):
        seen.append((req.config["BLOCK"], req.config["num_warps"], req.rep))
        budget.append(req.warmup + req.rep)
        ms, p20, p80 = fake_time(req)
        # a brief round under-reports BLOCK 128 / 1 warp, which a full timing corrects
        if req.rep < scale_kernel.rep and (req.config["BLOCK"], req.config["num_warps"]) == (128, 1):
            ms = 0.1
        return ms, p20, p80

    bench.set_timer(timer)
    policy("miss")
    scale(torch.randn(100, device=DEVICE))
    full = [(b, w) for b, w, rep in seen if rep == scale_kernel.rep]
    brief = [(b, w) for b, w, rep in seen if rep < scale_kernel.rep]
    assert len(brief) == len(CONFIGS) and len(full) == FINALISTS
    assert (128, 1) in full and (64, 2) in full
    (rec,) = default_store().layers[1].records()
    assert cfg_subset(rec.config) == BEST and rec.configs_tried == len(CONFIGS)
    assert tuner.stats()["configs_timed"] == len(CONFIGS)
    # what a dry run estimates is what tuning asked the timer for (failing configs included)
    assert sum(budget) == scale_kernel.budget_ms(len(CONFIGS))


def test_lone_candidate_is_timed_briefly_only(policy, monkeypatch):
    """With one config left after pruning there is nothing to choose: one brief timing
    (the record's median, and proof it runs), and the dry-run estimate says so."""
    reps = []

    def timer(req):
        reps.append(req.warmup + req.rep)
        return fake_time(req)

    monkeypatch.setattr(scale_kernel, "prune", lambda configs, named: [c for c in configs if c["BLOCK"] == 64][:1])
    bench.set_timer(timer)
    policy("miss")
    x = torch.randn(100, device=DEVICE)
    torch.testing.assert_close(scale(x), x * 2)
    assert len(reps) == 1 and reps[0] < scale_kernel.warmup + scale_kernel.rep
    assert reps[0] == scale_kernel.budget_ms(1)
    (rec,) = default_store().layers[1].records()
    assert rec.configs_tried == 1 and rec.median_ms > 0


def test_miss_tunes_once_persists_and_result_is_right(policy):
    policy("miss")
    x = torch.randn(100, device=DEVICE)
    torch.testing.assert_close(scale(x), x * 2)
    s = tuner.stats()
    assert (s["misses"], s["benchmarks_run"], s["configs_timed"], s["store_writes"]) == (1, 1, 8, 1)
    # same bucket (log: 100 and 120 -> 128): no new tuning, not even a store read
    scale(torch.randn(120, device=DEVICE))
    assert tuner.stats()["benchmarks_run"] == 1 and tuner.stats()["store_reads"] == 2
    (rec,) = default_store().layers[1].records()
    assert cfg_subset(rec.config) == BEST and rec.configs_tried == 8
    assert json.loads(rec.identity.key) == [128, "float32", "float32"]
    timings = default_store().layers[1].timings(rec.identity)
    failed = [t for t in timings if t.median_ms is None]
    assert len(failed) == 2 and all("out of resources" in t.error for t in failed)


def test_resolved_configs_lists_the_keys_this_process_resolved(policy):
    policy("miss")
    scale(torch.randn(100, device=DEVICE))
    got = {cfg_subset(c)["BLOCK"]: key for (name, key), c in tuner.resolved_configs().items() if name == scale_kernel.name}
    assert got == {BEST["BLOCK"]: (128, torch.float32, torch.float32)}
    tuner.clear_caches()
    assert not any(name == scale_kernel.name for name, _ in tuner.resolved_configs())


def test_new_process_reads_db_hit_without_benchmark(policy):
    policy("miss")
    scale(torch.randn(100, device=DEVICE))
    tuner.clear_caches()
    tuner.reset_stats()
    from tuner.store import set_default_store

    set_default_store(None)  # as a fresh process: nothing in memory
    scale(torch.randn(100, device=DEVICE))
    s = tuner.stats()
    assert (s["hits"], s["misses"], s["benchmarks_run"]) == (1, 0, 0)
    assert cfg_subset(scale_kernel.cache[(128, torch.float32, torch.float32)]) == BEST


def test_always_retunes(policy):
    policy("miss")
    scale(torch.randn(100, device=DEVICE))
    policy("always")
    tuner.clear_caches()
    scale(torch.randn(100, device=DEVICE))
    assert tuner.stats()["benchmarks_run"] == 2


def test_never_uses_default_then_nearest_and_records_miss(policy):
    policy("never")
    x = torch.randn(300, device=DEVICE)
    torch.testing.assert_close(scale(x), x * 2)
    s = tuner.stats()
    assert (s["benchmarks_run"], s["misses"], s["fallbacks"]) == (0, 1, 1)
    assert cfg_subset(scale_kernel.cache[(512, torch.float32, torch.float32)]) == {"BLOCK": 128, "num_warps": 2}
    sql = default_store().layers[1]
    (miss,) = sql.misses()
    assert json.loads(miss.identity.key) == [512, "float32", "float32"]
    assert json.loads(miss.raw_args)["n"] == 300
    # tune two keys under `miss`; `never` then picks the nearest one for a new key
    policy("miss")
    bench.set_timer(lambda req: (1.0, 1.0, 1.0) if req.config == {"BLOCK": 32, "num_warps": 1, "num_stages": 3, "num_ctas": 1} else (2.0, 2.0, 2.0))
    scale(torch.randn(4000, device=DEVICE))  # key 4096
    bench.set_timer(fake_time)
    scale(torch.randn(20, device=DEVICE))  # key 32
    policy("never")
    tuner.clear_caches()
    scale(torch.randn(3000, device=DEVICE))  # key 4096: tuned, a hit
    scale(torch.randn(2000, device=DEVICE))  # key 2048: nearest is 4096 (1 octave) not 32 (6 octaves)
    assert cfg_subset(scale_kernel.cache[(2048, torch.float32, torch.float32)]) == {"BLOCK": 32, "num_warps": 1}
    # a float16 key never borrows a float32 config: dtypes must match
    scale(torch.randn(2000, device=DEVICE).half())
    assert cfg_subset(scale_kernel.cache[(2048, torch.float16, torch.float16)]) == {"BLOCK": 128, "num_warps": 2}


def test_all_configs_failing_is_a_clear_error(policy):
    policy("miss")

    def broken(req):
        raise RuntimeError("nope")

    bench.set_timer(broken)
    with pytest.raises(NoConfigError, match="every config failed"):
        scale(torch.randn(10, device=DEVICE))


def test_real_wall_timer_picks_a_working_config(isolated_store, monkeypatch):
    monkeypatch.setenv("FLAGGEMS_AUTOTUNE", "miss")
    settings.reload()
    x = torch.randn(50, device=DEVICE)
    torch.testing.assert_close(scale(x, 3.0), x * 3)
    assert tuner.stats()["configs_timed"] == 8


@pytest.mark.parametrize(
    "spec,value,expected",
    [("identity", 100, 100), ("log", 100, 128), ("log", 128, 128), ("log", 1, 1), ("log", 0, 0), ("align32", 33, 64), ("align32", 32, 32), (lambda v: v // 10, 105, 10)],
)
def test_key_strategies(spec, value, expected):
    assert keys.resolve(spec)(value) == expected


def retuned(name, **kw):
    """A fresh LibTuner over the test kernel (its own name, cache and warnings)."""
    kw.setdefault("strategy", ["log"])
    return tuner.libtuner(configs=CONFIGS, key=["n"], name=name, **kw)(scale_kernel.fn)


def launch(t, x):
    y, n = x.new_empty(x.shape), x.numel()
    t[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, y, n, 2.0)
    return y


@pytest.mark.parametrize("spec,bucket", [("log", 128), ("align32", 96), (lambda v: v // 10, 7)], ids=["log", "align32", "callable"])
def test_strategy_buckets_the_stored_key(policy, spec, bucket):
    policy("miss")
    t = retuned(f"test.scale_{bucket}", strategy=[spec])
    x = torch.randn(70, device=DEVICE)
    torch.testing.assert_close(launch(t, x), x * 2)
    assert tuner.stats()["benchmarks_run"] == 1
    (rec,) = default_store().layers[1].records(kernel=t.name)
    assert json.loads(rec.identity.key) == [bucket, "float32", "float32"]
    assert cfg_subset(rec.config) == BEST
    assert list(t.cache) == [(bucket, torch.float32, torch.float32)]


def test_keyword_tensors_put_their_dtype_in_the_key(policy):
    policy("never")
    x = torch.randn(100, device=DEVICE)
    y16 = torch.empty(100, device=DEVICE, dtype=torch.float16)
    positional = scale_kernel.key_of((x, y16, 100, 2.0), {})
    assert positional == (128, torch.float32, torch.float16)
    assert scale_kernel.key_of((x,), {"y_ptr": y16, "n": 100, "factor": 2.0}) == positional
    assert scale_kernel.key_of((), {"factor": 2.0, "n": 100, "y_ptr": y16, "x_ptr": x}) == positional
    grid = lambda meta: (triton.cdiv(100, meta["BLOCK"]),)
    for y in (y16, torch.empty(100, device=DEVICE)):
        scale_kernel[grid](x, y_ptr=y, n=100, factor=2.0)
        torch.testing.assert_close(y, (x * 2).to(y.dtype))
    assert {(128, torch.float32, torch.float16), (128, torch.float32, torch.float32)} <= set(scale_kernel.cache)
    raw = sorted(json.loads(m.raw_args)["dtypes"] for m in default_store().layers[1].misses())
    assert raw == [["float32", "float16"], ["float32", "float32"]]


def test_tuning_lock_lives_beside_the_sqlite_db(isolated_store):
    from tuner.store import LayeredStore, MemoryStore

    ident = scale_kernel.identity((128, torch.float32, torch.float32))
    lock = scale_kernel._lock_path(ident, default_store())
    assert os.path.dirname(lock) == str(isolated_store / "tuning.db.locks")
    # no SQLite file (tunerd or PostgreSQL only): the cache dir
    lock = scale_kernel._lock_path(ident, LayeredStore([MemoryStore()]))
    assert os.path.dirname(lock) == str(isolated_store / "cache" / "locks")


def test_stored_row_with_undeclared_config_is_ignored(policy, caplog):
    from tuner.store import Record

    t = retuned("test.scale_badrow")
    ident = t.identity((128, torch.float32, torch.float32))
    bogus = {"BLOCK": 48, "num_warps": 3, "num_stages": 3, "num_ctas": 1}
    default_store().layers[1].save(Record(ident, bogus, 0.1, 0.1, 0.1, 1))
    x = torch.randn(100, device=DEVICE)
    policy("never")  # a miss: the nearest valid row (none) or the default, never the bogus row
    with caplog.at_level("WARNING", logger="tuner.libtuner"):
        torch.testing.assert_close(launch(t, x), x * 2)
        assert t.cache[(128, torch.float32, torch.float32)] == t.default
        tuner.clear_caches()
        launch(t, x)
    assert len([r for r in caplog.records if "ignoring stored config" in r.message]) == 1
    assert tuner.stats()["hits"] == 0 and tuner.stats()["misses"] == 2
    policy("miss")  # a miss: tuned, and the good row replaces the bogus one
    tuner.clear_caches()
    launch(t, x)
    assert tuner.stats()["benchmarks_run"] == 1
    assert cfg_subset(t.cache[(128, torch.float32, torch.float32)]) == BEST
    assert cfg_subset(default_store().layers[1].lookup(ident).config) == BEST


def test_bad_strategy_and_key_names_are_errors():
    with pytest.raises(ValueError, match="unknown key strategy"):
        keys.resolve("cubic")
    with pytest.raises(ValueError, match="not arguments"):
        tuner.libtuner(configs=[{}], key=["nope"])(scale_kernel.fn)


def test_kernel_hash_changes_with_config_space():
    from tuner.kernel_hash import kernel_hash

    a = kernel_hash(scale_kernel.fn, scale_kernel.configs)
    assert a == kernel_hash(scale_kernel.fn, scale_kernel.configs)
    assert a != kernel_hash(scale_kernel.fn, scale_kernel.configs[:-1])


@triton.jit
def _add_one(x):
    return x + 1


@triton.jit
def _add_two(x):
    return x + 2


# A module holding a jit helper, called as ``helper_mod.helper(...)`` (as reduction.py
# calls ``rc.to_acc``).
helper_mod = types.ModuleType("helper_mod")
helper_mod.helper = _add_one


@triton.jit
def _calls_module_helper(X):
    tl.store(X, helper_mod.helper(tl.load(X)))


def _kernel_closing_over(helper):
    @triton.jit
    def kernel(X):
        tl.store(X, helper(tl.load(X)))

    return kernel


def test_kernel_hash_follows_module_attribute_helpers(monkeypatch):
    from tuner.kernel_hash import kernel_hash

    a = kernel_hash(_calls_module_helper)
    monkeypatch.setattr(helper_mod, "helper", _add_two)
    assert kernel_hash(_calls_module_helper) != a
    # the audited case: reduction's kernel calls ``rc.to_acc`` from _reduce_common
    from flag_gems.ops import _reduce_common as rc, reduction

    b = kernel_hash(reduction._reduce_kernel)
    monkeypatch.setattr(rc, "to_acc", _add_one)
    assert kernel_hash(reduction._reduce_kernel) != b


def test_kernel_hash_follows_closure_helpers():
    from tuner.kernel_hash import kernel_hash

    one, two = _kernel_closing_over(_add_one), _kernel_closing_over(_add_two)
    assert kernel_hash(one) != kernel_hash(two)
    assert kernel_hash(one) == kernel_hash(_kernel_closing_over(_add_one))


def test_kernel_hash_covers_the_config_launcher(monkeypatch):
    """The kernels a config launcher launches (GEMM's split-K reduction, its TMA variant)
    and the host functions it calls are part of the version: editing one retunes."""
    from flag_gems.ops import mm
    from tuner.kernel_hash import kernel_hash

    t = mm._mm_kernel
    a = kernel_hash(t.fn, t.configs, t.config_launcher, bench.objective())
    assert a == t.kernel_hash and a != kernel_hash(t.fn, t.configs, objective=bench.objective())
    a = kernel_hash(t.fn, t.configs, t.config_launcher)
    monkeypatch.setattr(mm, "_mm_tma_kernel", _calls_module_helper)  # another kernel behind TMA configs
    assert kernel_hash(t.fn, t.configs, t.config_launcher) != a
    monkeypatch.undo()
    monkeypatch.setattr(mm, "_WS", 5)  # a constant the launcher reads
    assert kernel_hash(t.fn, t.configs, t.config_launcher) != a


def test_kernel_hash_covers_the_tuning_objective(monkeypatch):
    """A config tuned for device time alone (CUDA-graph replay) is another answer than one
    tuned with its host launch time counted: rows of the two never serve each other."""
    eager = scale_kernel.kernel_hash
    monkeypatch.setenv("FLAGGEMS_TUNE_HOST", "0")
    settings.reload()
    monkeypatch.setattr(scale_kernel, "_hash", None)
    try:
        assert bench.objective() == "device" and scale_kernel.kernel_hash != eager
    finally:
        monkeypatch.delenv("FLAGGEMS_TUNE_HOST")
        settings.reload()
    monkeypatch.setattr(scale_kernel, "_hash", None)
    assert scale_kernel.kernel_hash == eager


def test_wall_timer_reports_real_percentiles(monkeypatch):
    durations = iter([5.0, 1.0, 4.0, 2.0, 3.0])  # ms of the 5 timed runs
    clock = {"t": 0.0, "start": True}

    def perf_counter():
        if not clock["start"]:
            clock["t"] += next(durations) / 1e3
        clock["start"] = not clock["start"]
        return clock["t"]

    monkeypatch.setattr(bench.time, "perf_counter", perf_counter)
    req = bench.BenchRequest(lambda: None, "k", {}, (), 0, 0)
    med, p20, p80 = bench.wall_timer(req)
    assert med == pytest.approx(3.0) and p20 == pytest.approx(1.8) and p80 == pytest.approx(4.2)


def test_bad_policy_value_is_clear(monkeypatch):
    monkeypatch.setenv("FLAGGEMS_AUTOTUNE", "sometimes")
    with pytest.raises(settings.SettingsError, match="FLAGGEMS_AUTOTUNE"):
        settings.reload()
    monkeypatch.undo()
    settings.reload()


def test_never_process_on_db_tuned_by_another_process(isolated_store):
    """Process 1 tunes under `miss`; process 2 under `never` runs 0 benchmarks."""
    script = textwrap.dedent(
        """
        import json, sys, torch, tuner
        from tuner import bench
        from tests.helpers import DEVICE
        from tests.tuner.kernels import fake_time, scale
        bench.set_timer(fake_time)
        for n in (100, 1000):
            scale(torch.randn(n, device=DEVICE))
        print(json.dumps(tuner.stats()))
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])), )
    run = lambda policy: json.loads(subprocess.run(
        [sys.executable, "-c", script], env=env | {"FLAGGEMS_AUTOTUNE": policy}, check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1])
    first = run("miss")
    assert first["benchmarks_run"] == 2
    second = run("never")
    assert (second["benchmarks_run"], second["misses"], second["hits"]) == (0, 0, 2)


def test_elsewhere_tuned_does_not_wait_for_a_busy_key(policy):
    """A key whose tuning lock another process holds: inside ``elsewhere_tuned`` the call
    runs the default config at once, benchmarks and stores nothing; the lock's holder
    is left to store it."""
    import filelock

    from tuner.libtuner import elsewhere_tuned

    policy("miss")
    x = torch.randn(100, device=DEVICE)
    key = scale_kernel.key_of((x, x, x.numel(), 2.0), {})  # scale()'s launch: x, y, n, factor
    with filelock.FileLock(scale_kernel._lock_path(scale_kernel.identity(key), default_store())):  # held "elsewhere"
        with elsewhere_tuned():
            torch.testing.assert_close(scale(x), x * 2)
    assert tuner.stats()["benchmarks_run"] == 0 and not default_store().layers[1].records()
    assert scale_kernel.cache[key] == dict(scale_kernel.default)


def test_miss_while_capturing_a_cuda_graph_falls_back_untuned(policy, monkeypatch):
    """A miss during CUDA-graph capture (vLLM's decode graphs) runs the nearest tuned
    config or the default and records the miss, without benchmarking (a capture allows
    no synchronization); the key stays unresolved, so its first call outside a capture
    tunes it, and callers may file its launch again."""
    libtuner = sys.modules["tuner.libtuner"]  # (``tuner.libtuner`` the name is the decorator)
    policy("miss")
    monkeypatch.setattr(libtuner, "capturing_graph", lambda: True)
    x = torch.randn(300, device=DEVICE)
    torch.testing.assert_close(scale(x), x * 2)
    torch.testing.assert_close(scale(x), x * 2)
    s = tuner.stats()
    assert (s["benchmarks_run"], s["misses"], s["capture_fallbacks"]) == (0, 2, 2)
    assert (512, torch.float32, torch.float32) not in scale_kernel.cache
    assert json.loads(default_store().layers[1].misses()[0].identity.key) == [512, "float32", "float32"]
    # callers filed "nothing kept" for those calls: the first resolve after the capture
    # empties their direct caches, once
    forgot = []
    monkeypatch.setattr(sys.modules["tuner.launch"], "forget_direct", lambda: forgot.append(1))
    monkeypatch.setattr(libtuner, "capturing_graph", lambda: False)
    scale(x)
    scale(torch.randn(20, device=DEVICE))
    assert tuner.stats()["benchmarks_run"] == 2 and forgot == [1]
    assert cfg_subset(scale_kernel.cache[(512, torch.float32, torch.float32)]) == BEST


def test_capturing_graph_is_false_off_the_gpu():
    from tuner.libtuner import capturing_graph

    assert capturing_graph() is (DEVICE == "cuda" and torch.cuda.is_current_stream_capturing())
