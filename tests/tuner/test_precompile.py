"""Compiling a pretune run's configs ahead of benchmarking (tuner.precompile): a job is
compiled, never launched, timed or stored; stored keys are not compiled; the process
pool hands jobs over in order and the run tunes exactly what it tunes without it."""
import json
import zlib

import pytest

import tuner
from tuner import bench, precompile
from tuner import pretune as pt
from flag_gems.ops import mm as mm_ops
from tuner.store import default_store
from tuner.workload import Job

PROVIDER = "flag_gems.tuning"
JOBS = [
    Job("linear", ((3, 256), (64, 256)), "float32"),
    Job("linear", ((300, 64), (32, 64)), "float32"),
    Job("rms_norm", ((4, 96),), "float32"),
]


def fake_time(req):
    h = zlib.crc32(json.dumps([req.config, [str(k) for k in req.key]], sort_keys=True).encode())
    return 1.0 + (h % 1000) / 1000, 1.0, 2.0


@pytest.fixture
def timer(isolated_store):
    bench.set_timer(fake_time)
    yield isolated_store
    bench.set_timer(None)


def stored():
    return {(r.identity.kernel, r.identity.key) for r in default_store().layers[1].records()}


def test_compile_job_compiles_every_candidate_without_launching(timer, monkeypatch):
    warmed, launched = [], []
    jit = type(mm_ops._mm_kernel.fn)  # LibTuner -> the jit function
    real = jit.run

    def spy(self, *args, warmup=False, **kwargs):
        (warmed if warmup else launched).append(kwargs.get("BLOCK_K"))
        return real(self, *args, warmup=warmup, **kwargs)

    monkeypatch.setattr(jit, "run", spy)
    n = precompile.compile_job(JOBS[0].as_dict(), PROVIDER)
    assert n == len(warmed) > 1
    assert not launched
    assert tuner.stats()["benchmarks_run"] == 0 and not stored()


def test_stored_key_is_not_compiled(timer):
    pt.run_jobs(JOBS[:1], provider=PROVIDER, progress=False)
    assert stored()
    assert precompile.compile_job(JOBS[0].as_dict(), PROVIDER) == 0
    assert precompile.compile_job(JOBS[0].as_dict(), PROVIDER, force=True) > 0


def test_default_workers_is_zero_under_the_interpreter():
    from tuner import settings

    assert (precompile.default_workers() == 0) == settings.get().interpret


def test_pool_ahead_of_benchmarks_tunes_the_same_keys(timer, tmp_path, monkeypatch):
    """Two spawned compile workers ahead of the run: the same keys and winners as a run
    without them, and every job yielded in order."""
    order = [i for i, _ in precompile.ahead(JOBS, PROVIDER, workers=2)]
    assert order == list(range(len(JOBS)))
    with_pool = pt.run_jobs(JOBS, provider=PROVIDER, progress=False, compile_workers=2)
    keys = {(t.kernel, t.key, json.dumps(t.config, sort_keys=True)) for t in with_pool.tuned}

    monkeypatch.setenv("FLAGGEMS_TUNING_DB", str(tmp_path / "second.db"))
    from tuner import settings
    from tuner.store import set_default_store

    settings.reload()
    set_default_store(None)
    plain = pt.run_jobs(JOBS, provider=PROVIDER, progress=False)
    assert keys == {(t.kernel, t.key, json.dumps(t.config, sort_keys=True)) for t in plain.tuned}
    assert with_pool.jobs_failed == plain.jobs_failed == 0


def test_pool_spreads_over_devices(monkeypatch):
    """Each pool process takes the next device in turn (its CUDA_VISIBLE_DEVICES)."""
    import multiprocessing as mp

    counter = mp.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        precompile._init_worker(counter, ("0", "1"))
        seen.append(__import__("os").environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["0", "1", "0"]


def test_run_parallel_with_a_shared_compile_pool(isolated_store, tmp_path):
    """Two device workers fed by one compile pool: every key of the jobs stored once, no
    job lost or run twice."""
    from tuner.store.db import resolve_url

    s = pt.run_parallel(JOBS, ["0", "1"], db_url=resolve_url(None), provider=PROVIDER, progress=False, compile_workers=1)
    assert s.jobs == len(JOBS) and s.jobs_failed == 0 and not s.errors
    assert len(s.tuned) == len({(t.kernel, t.key) for t in s.tuned}) == len(stored()) > 0


def test_run_parallel_unknown_op_stops_the_workers(isolated_store):
    from tuner.store.db import resolve_url

    with pytest.raises(pt.PretuneError, match="unknown ops"):
        pt.run_parallel([Job("no_such_op", ((2, 2),), "float32")], ["0", "1"], db_url=resolve_url(None),
                        provider=PROVIDER, progress=False)
    assert not stored()


def test_run_jobs_gives_up_after_failures_in_a_row(timer):
    bad = Job("linear", ((3, 8), (5, 7)), "float32")  # K mismatch: fails when run
    s = pt.run_jobs([], provider=PROVIDER, progress=False, feed=enumerate([JOBS[0], bad, bad, bad, JOBS[1]]), give_up_after=3)
    assert (s.jobs, s.jobs_tuned, s.jobs_failed) == (4, 1, 3) and "3 jobs in a row failed" in s.errors[-1]["error"]
    s = pt.run_jobs([], provider=PROVIDER, progress=False, feed=enumerate([bad, bad, JOBS[1], bad, bad]), give_up_after=3)
    assert (s.jobs, s.jobs_failed) == (5, 4)  # never three in a row


def test_run_parallel_workers_that_give_up_leave_no_job_uncounted(isolated_store):
    """Every job fails: each worker stops after GIVE_UP_AFTER in a row; the run returns
    (no hang) and counts every job, run or not, as failed."""
    from tuner.store.db import resolve_url

    bad = [Job("linear", ((3, 8), (5, 9 + i)), "float32") for i in range(3 * pt.GIVE_UP_AFTER)]  # K mismatch
    s = pt.run_parallel(bad, ["0", "1"], db_url=resolve_url(None), provider=PROVIDER, progress=False)
    assert s.jobs == len(bad) and s.jobs_failed == len(bad)
    assert sum("in a row failed" in e["error"] for e in s.errors) == 2  # both workers gave up
    assert any(e["error"].startswith("not run") for e in s.errors)  # and left jobs unrun


def test_idle_consumer_takes_jobs_uncompiled_only_while_the_pool_starts():
    """Until the pool finishes its first job, an idle consumer does not wait; once the
    pool is started, every job is waited for, idle or not."""
    import threading
    from concurrent.futures import Future

    pre = precompile.Precompiler([], PROVIDER, 0)
    pre._futures = [Future(), Future(), Future()]
    for f in pre._futures:
        f.add_done_callback(pre._on_done)
    assert pre.wait(0, idle=lambda: True) == 0 and not pre._futures[0].done()  # taken uncompiled
    threading.Timer(0.2, pre._futures[1].set_result, (7,)).start()
    assert pre.wait(1, idle=lambda: False) == 7 and pre.started  # busy consumer: waits
    threading.Timer(0.2, pre._futures[2].set_result, (5,)).start()
    assert pre.wait(2, idle=lambda: True) == 5  # started: idle no longer skips the wait


def test_pool_runs_at_lower_priority(monkeypatch):
    import os

    calls = []
    monkeypatch.setattr(os, "nice", calls.append)
    monkeypatch.setattr(precompile.settings, "reload", lambda: None)
    precompile._init_worker()
    assert calls == [precompile.POOL_NICENESS]


def test_warm_compiles_what_a_launcher_config_launches(timer, monkeypatch):
    """LibTuner.warm goes through the config launcher: a TMA config compiles the TMA
    kernel (its descriptors built for the config's tiles), nothing launches."""
    warmed, launched = [], []
    jit = type(mm_ops._mm_kernel.fn)
    real = jit.run

    def spy(self, *args, warmup=False, **kwargs):
        (warmed if warmup else launched).append(self.fn.__name__)
        return real(self, *args, warmup=warmup, **kwargs)

    monkeypatch.setattr(jit, "run", spy)
    n = precompile.compile_job(Job("linear", ((256, 128), (128, 128)), "float16").as_dict(), PROVIDER)
    assert n > 1 and not launched
    assert "_mm_tma_kernel" in warmed and "_mm_kernel" in warmed


def run_plan(jobs, devices=("0", "1"), takeable=lambda i, d: True, **kw):
    """Hand out every job with devices finishing their jobs in turn: (device, job) pairs."""
    plan, order = pt.Dispatch(jobs, devices, **kw), []
    while plan.pending:
        for dev in plan.wanting():
            i = plan.pick(dev, takeable)
            if i is not None:
                order.append((dev, i))
        for dev in devices:  # each device runs its oldest queued job
            if plan.running[dev]:
                plan.ran(dev, plan.running[dev][0])
    return order


def test_dispatch_keeps_neighbouring_jobs_of_one_op_on_one_device():
    """Six norm jobs then six GEMM jobs: each op's jobs run on one device (the first
    device to take one), so two devices never start the same kernels at once."""
    jobs = [Job("rms_norm", ((t, 96),), "float32") for t in range(1, 7)] + \
        [Job("linear", ((t, 64), (32, 64)), "float32") for t in range(1, 7)]
    order = run_plan(jobs)
    assert sorted(i for _, i in order) == list(range(12))  # every job once
    by_op = {op: {d for d, i in order if jobs[i].op == op} for op in ("rms_norm", "linear")}
    assert len(by_op["rms_norm"]) == len(by_op["linear"]) == 1 and by_op["rms_norm"] != by_op["linear"]


def test_dispatch_keeps_every_device_busy():
    """One op only: the second device, with nothing queued, takes its jobs too (idle is
    worse than loading the same kernels twice); none holds more than per_device."""
    jobs = [Job("rms_norm", ((t, 96),), "float32") for t in range(1, 9)]
    plan = pt.Dispatch(jobs, ["0", "1"])
    for _ in range(2):
        for dev in plan.wanting():
            plan.pick(dev, lambda i, d: True)
    assert [len(r) for r in plan.running.values()] == [2, 1]  # the second: one, taken while idle
    assert plan.pick("1", lambda i, d: True) is None  # not a second steal while it has one
    order = run_plan(jobs)
    assert {d for d, _ in order} == {"0", "1"} and sorted(i for _, i in order) == list(range(8))


def test_dispatch_waits_for_takeable_jobs_and_requeues_a_lost_device():
    jobs = [Job("rms_norm", ((t, 96),), "float32") for t in range(1, 4)] + [Job("linear", ((2, 64), (32, 64)), "float32")]
    plan = pt.Dispatch(jobs, ["0", "1"], window=2)
    assert plan.pick("0", lambda i, d: i > 0) == 1  # job 0 is not takeable yet (not compiled)
    assert plan.pick("1", lambda i, d: i > 0) == 2  # idle: device 0's op (the GEMM is past the window)
    assert plan.pick("1", lambda i, d: True) == 3  # the window moved on: the GEMM, an op of its own
    assert plan.owner == {plan.group[1]: "0", plan.group[3]: "1"}  # a device that took another's op did not take it over
    plan.lost("0")  # device 0 stopped: its queued job goes back
    assert plan.pending == [0, 1] and plan.wanting() == []
