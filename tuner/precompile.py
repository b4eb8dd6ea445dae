"""Compile a pretune run's configs ahead of benchmarking, in parallel processes.

Benchmarking is serial on a GPU, but compiling a config (Triton -> PTX -> cubin) is CPU
work that dominates a cold pretune run. Worker processes run each job up to its first
tuned kernel with a resolve hook that compiles every candidate config into Triton's
on-disk cache (``LibTuner.warm``: ``warmup``, Triton's public compile-without-launch) and
then abandons the job: nothing is launched, timed or written. When the benchmarking
process reaches the job, each config is a cache hit.

Jobs are handed out in the order the benchmarking process runs them, and it waits for a
job's compile only when it is about to run it, so compiling stays ahead of benchmarking.
Keys already stored (a resumed run) are not compiled. Under the Triton interpreter there
is nothing to compile: ``default_workers`` is 0 there.
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from typing import Any, Iterator, Sequence

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


def _init_worker(counter: Any = None, devices: Sequence[str] = (), db_url: str | None = None) -> None:
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
        if workers < 1 or not jobs:
            return
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(ctx.Value("i", 0), tuple(devices), db_url))
        self._futures = [self._pool.submit(compile_job, j.as_dict(), provider, force, bool(devices)) for j in jobs]

    def wait(self, i: int) -> int:
        """Block until job ``i``'s configs are compiled; how many were (0: none, or failed:
        the benchmarking process then compiles them itself)."""
        fut = self._futures[i]
        if fut is None:
            return 0
        try:
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


def ahead(jobs: Sequence[Job], provider: str, workers: int, force: bool = False,
          devices: Sequence[str] = (), db_url: str | None = None) -> Iterator[tuple[int, Job]]:
    """Iterate ``jobs`` in order, each one's configs compiled before it is yielded (by
    ``workers`` processes). With ``devices`` (several GPUs sharing the run) the processes
    are spread over them (CUDA_VISIBLE_DEVICES) and compile each job's default config too;
    ``db_url``: the run's DB, whose stored keys are not compiled."""
    with Precompiler(jobs, provider, workers, force, devices, db_url) as pre:
        for i, job in enumerate(jobs):
            pre.wait(i)
            yield i, job
