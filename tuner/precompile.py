"""Compile a pretune run's configs ahead of benchmarking, in parallel processes.

Benchmarking is serial on a GPU, but compiling a config (Triton -> PTX -> cubin) is CPU
work that dominates a cold pretune run. Worker processes run each job up to its first
tuned kernel with a resolve hook that compiles every candidate config into Triton's
on-disk cache (``LibTuner.warm``: ``warmup``, Triton's public compile-without-launch) and
then abandons the job: nothing is launched, timed or written. When the benchmarking
process reaches the job, each config is a cache hit.

Jobs are compiled in the order the benchmarking processes run them (near it, with several
devices: ``tuner.pretune.Dispatch``), and a job's compile is waited for only when it is
about to run, so compiling stays ahead of benchmarking.
Two things keep the GPUs busy from the start: until the pool has compiled its first job
(its processes are still importing torch and starting CUDA), a benchmarking process with
nothing to do takes the next job uncompiled and compiles as it times; and the pool runs at
a lower CPU priority, so benchmarking processes (the critical path) never queue behind
compiles. Keys already stored (a resumed run) are not compiled. Under the Triton
interpreter there is nothing to compile: ``default_workers`` is 0 there.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # builtin TimeoutError from 3.11
from typing import Any, Callable, Iterator, Sequence

from tuner import settings
from tuner.workload import Job

log = logging.getLogger(__name__)


class _Compiled(Exception):
    """Raised by the compile hook: the job's first tuned kernel is compiled, stop the job."""


def default_workers(devices: int = 1) -> int:
    """CPU cores per device worker, leaving one for the benchmarking process (none under
    the interpreter, which has nothing to compile)."""
    if settings.get().interpret:
        return 0
    return max(1, (os.cpu_count() or 2) // max(devices, 1) - 1)


def compile_job(spec: dict[str, Any], provider: str, force: bool = False, with_default: bool = False) -> int:
    """Compile the candidate configs of the first tuned kernel ``spec`` requests (unless
    its key is stored and ``force`` is off), and with ``with_default`` its default config
    (what a device runs for a key another device is tuning: ``elsewhere_tuned``); returns
    how many configs compiled."""
    from tuner.libtuner import resolve_hook
    from tuner.pretune import load_provider, uninitialized_runner
    from tuner.store import default_store

    prov = load_provider(provider)
    compiled = 0

    def hook(tuner: Any, key: tuple, args: tuple, kwargs: dict, grid: Any) -> dict | None:
        nonlocal compiled
        if not force and tuner._checked(default_store().lookup(tuner.identity(key))) is not None:
            return None  # stored: the benchmarking process will not tune it
        configs = tuner.candidate_configs(args, kwargs)
        if with_default and tuner.default not in configs:
            configs.append(tuner.default)
        compiled = tuner.warm(args, kwargs, grid, configs)
        raise _Compiled

    run = uninitialized_runner(prov)  # no fill kernel competes with the benchmarks
    with resolve_hook(hook):
        try:
            run(Job.from_dict(spec))
        except _Compiled:
            pass
    return compiled


POOL_NICENESS = 10  # compiling yields the CPU to the benchmarking processes


def _init_worker(counter: Any = None, devices: Sequence[str] = (), db_url: str | None = None) -> None:
    try:
        os.nice(POOL_NICENESS)
    except OSError:  # not permitted here: compile at normal priority
        pass
    if devices:  # spread the pool over the devices (each holds a context and job inputs)
        with counter.get_lock():
            n = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[n % len(devices)]  # before CUDA starts here
    if db_url:  # the DB whose stored keys are not compiled
        os.environ["FLAGGEMS_TUNING_DB"] = db_url
    settings.reload()


class Precompiler:
    """Compiles jobs in a process pool, ahead of the caller running them in order."""

    def __init__(self, jobs: Sequence[Job], provider: str, workers: int, force: bool = False,
                 devices: Sequence[str] = (), db_url: str | None = None) -> None:
        self._futures: list[Future | None] = [None] * len(jobs)
        self._pool: Executor | None = None
        self.started = False  # the pool has finished a job (it is past its start-up)
        if workers < 1 or not jobs:
            return
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(ctx.Value("i", 0), tuple(devices), db_url))
        self._futures = [self._pool.submit(compile_job, j.as_dict(), provider, force, bool(devices)) for j in jobs]
        for f in self._futures:
            f.add_done_callback(self._on_done)

    def _on_done(self, _: Future) -> None:
        self.started = True

    def compiled(self, i: int) -> bool:
        """Whether job ``i``'s compile is over (done, failed, or none: no pool)."""
        fut = self._futures[i]
        return fut is None or fut.done()

    def wait(self, i: int, idle: Callable[[], bool] | None = None) -> int:
        """Block until job ``i``'s configs are compiled; how many were (0: none, or failed:
        the benchmarking process then compiles them itself). ``idle``: whether the job's
        consumer has nothing to do; while the pool is starting, an idle consumer does not
        wait (returns 0) but takes the job uncompiled."""
        fut = self._futures[i]
        if fut is None:
            return 0
        try:
            while idle is not None and not self.started:
                if idle():
                    return 0
                try:
                    return fut.result(timeout=0.05)
                except FutureTimeout:
                    pass
            return fut.result()
        except Exception as e:  # a worker that died or a job that failed: compile in-process
            log.debug("precompiling job %d failed: %s", i, e)
            return 0

    def close(self) -> None:
        if self._pool is not None:
            for f in self._futures:
                if f is not None:
                    f.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "Precompiler":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ahead(jobs: Sequence[Job], provider: str, workers: int, force: bool = False) -> Iterator[tuple[int, Job]]:
    """Iterate ``jobs`` in order, each one's configs compiled before it is yielded (by
    ``workers`` processes), except while the pool is starting: the caller, idle while it
    waits, then takes the job uncompiled. (Several devices: ``run_parallel`` hands out
    from a ``Precompiler`` itself.)"""
    with Precompiler(jobs, provider, workers, force) as pre:
        for i, job in enumerate(jobs):
            pre.wait(i, idle=lambda: True)
            yield i, job
