"""Offline pretuning: run a workload's jobs (op calls) so every LibTuner they hit tunes
and stores the key it requests.

The op library is reached through a *provider* module loaded by name (default
``flag_gems.tuning``; this package never imports flag_gems). The provider exposes
``run_job(job)``, ``known_op(name)`` and ``replay_job(kernel, raw_args)``.

How jobs become tuned keys: each job runs once under ``FLAGGEMS_AUTOTUNE=miss``
(``always`` with ``force``). A LibTuner key that is already stored for this kernel
version and environment is a hit: nothing is benchmarked. A missing key is benchmarked
over its config space and saved (with every config's timing) in its own transaction
before the next key starts. So the state of a run lives in the DB only: a run stopped
by Ctrl-C, a crash or an error loses at most the key in flight, and rerunning the same
command re-executes every job but benchmarks only keys not yet stored ("skipped" jobs
are those that needed no benchmark). With ``force`` every key is retuned once per run.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable, Iterator, Sequence

from tuner import precompile, settings
from tuner.stats import stats
from tuner.store import Identity, LayeredStore, Record, Timing, canonical_json, default_store, set_default_store
from tuner.workload import Job

log = logging.getLogger(__name__)

DEFAULT_PROVIDER = "flag_gems.tuning"


class PretuneError(RuntimeError):
    """A pretune run that cannot start (unknown op, no provider, bad arguments)."""


def load_provider(name: str = DEFAULT_PROVIDER) -> Any:
    try:
        mod = importlib.import_module(name)
    except ImportError as e:
        raise PretuneError(f"cannot import the pretune provider {name!r}: {e}") from e
    for attr in ("run_job", "known_op"):
        if not hasattr(mod, attr):
            raise PretuneError(f"provider {name!r} has no {attr}()")
    return mod


def preload(prov: Any, ops: Collection[str]) -> threading.Thread | None:
    """Import, in a background thread, the modules the provider says jobs of ``ops`` import
    slowly on first use (``slow_imports``), so the first such job does not wait for them.
    An import that fails here fails again, and is reported, in its job."""
    modules = getattr(prov, "slow_imports", lambda ops: [])(ops)
    if not modules:
        return None

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 - the job that needs it reports it
                log.debug("preloading %s failed: %s", name, e)

    t = threading.Thread(target=run, name="pretune-preload", daemon=True)
    t.start()
    return t


def checked_provider(provider: str | Any, jobs: Sequence[Job]) -> Any:
    """The provider module, after checking it knows every job's op."""
    prov = load_provider(provider) if isinstance(provider, str) else provider
    unknown = sorted({j.op for j in jobs if not prov.known_op(j.op)})
    if unknown:
        raise PretuneError(f"unknown ops {unknown}: the provider {getattr(prov, '__name__', prov)} has no such op")
    return prov


# -- what a run tuned ------------------------------------------------------------------------
@dataclass
class Tuned:
    kernel: str
    key: str
    config: dict
    best_ms: float
    default_ms: float | None  # the kernel's default config's time, when it was among those timed
    configs_tried: int

    @property
    def speedup(self) -> float | None:
        if self.default_ms is None or not self.best_ms or not math.isfinite(self.default_ms):
            return None
        return self.default_ms / self.best_ms


@dataclass
class Summary:
    jobs: int = 0
    jobs_tuned: int = 0  # jobs that benchmarked at least one key
    jobs_skipped: int = 0  # jobs whose every key was already stored
    jobs_failed: int = 0
    tuned: list[Tuned] = field(default_factory=list)
    errors: list[dict[str, str]] = field(default_factory=list)
    wall_s: float = 0.0
    # time the benchmarking process(es) sat waiting for their next compiled job: compiling
    # not keeping up (``devices``: the same per device worker, with its jobs and wall time)
    waited_s: float = 0.0
    devices: dict[str, dict[str, float | None]] = field(default_factory=dict)
    # one entry per job run: where and when it ran, what it waited and timed (the report's
    # view of where a run's time went; see ``job_entry``)
    timeline: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: "Summary") -> None:
        self.jobs += other.jobs
        self.jobs_tuned += other.jobs_tuned
        self.jobs_skipped += other.jobs_skipped
        self.jobs_failed += other.jobs_failed
        self.tuned += other.tuned
        self.errors += other.errors
        self.waited_s += other.waited_s
        self.timeline += other.timeline

    def per_kernel(self) -> list[dict[str, Any]]:
        by: dict[str, list[Tuned]] = defaultdict(list)
        for t in self.tuned:
            by[t.kernel].append(t)
        rows = []
        for kernel, ts in sorted(by.items()):
            sp = [t.speedup for t in ts if t.speedup is not None]
            geo = math.exp(sum(math.log(s) for s in sp) / len(sp)) if sp else None
            rows.append({
                "kernel": kernel, "keys_tuned": len(ts), "speedup_geomean": geo,
                "speedup_max": max(sp) if sp else None, "keys_with_default_timed": len(sp),
            })
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": self.jobs, "jobs_tuned": self.jobs_tuned, "jobs_skipped": self.jobs_skipped,
            "jobs_failed": self.jobs_failed, "keys_tuned": len(self.tuned), "wall_s": round(self.wall_s, 3),
            "waited_for_compiles_s": round(self.waited_s, 3), "devices": self.devices,
            "kernels": self.per_kernel(), "keys": [dataclasses.asdict(t) | {"speedup": t.speedup} for t in self.tuned],
            "errors": self.errors, "timeline": self.timeline,
        }

    def table(self) -> str:
        rows = self.per_kernel()
        head = f"{'kernel':<60} {'keys':>5} {'speedup vs default (geomean / max)':>36}"
        lines = [head, "-" * len(head)]
        for r in rows:
            sp = "n/a (default not timed)" if r["speedup_geomean"] is None else f"{r['speedup_geomean']:.2f}x / {r['speedup_max']:.2f}x"
            lines.append(f"{r['kernel']:<60} {r['keys_tuned']:>5} {sp:>36}")
        lines.append(
            f"{len(self.tuned)} keys tuned; {self.jobs} jobs: {self.jobs_tuned} tuned, {self.jobs_skipped} "
            f"already tuned, {self.jobs_failed} failed; {self.wall_s:.1f} s"
        )
        for dev, d in self.devices.items():  # when each started and finished: load balance and start-up cost
            span = f"from {d['first_job_s']:.1f} s to {d['done_s']:.1f} s" if d["first_job_s"] is not None else "no job"
            lines.append(f"GPU {dev}: {d['jobs']:.0f} jobs {span} into the run, "
                         f"{d['waited_s']:.1f} s of it waiting for compiled jobs")
        if not self.devices and self.waited_s >= 0.05 * self.wall_s:
            lines.append(f"{self.waited_s:.1f} s waiting for compiled jobs: compiling was the bottleneck (--compile-workers)")
        return "\n".join(lines)


def timeline_op(job: Job) -> str:
    """How a timeline entry names its job (the job's description, capped)."""
    return job.describe()[:120]


def job_entry(i: int, job: Job, start_s: float, run_s: float, since_asked_s: float, before: dict[str, int]) -> dict[str, Any]:
    """A timeline entry: job ``i`` started ``start_s`` into the run and ran ``run_s``; the
    rest of ``since_asked_s`` (from asking for the job to its end) was waiting for it;
    ``before``: ``tuner.stats()`` as it started."""
    now = stats()
    return {"job": i, "op": timeline_op(job), "start_s": round(start_s, 3), "run_s": round(run_s, 3),
            "waited_s": round(max(since_asked_s - run_s, 0.0), 3),
            "benchmarks": now["benchmarks_run"] - before["benchmarks_run"],
            "configs_timed": now["configs_timed"] - before["configs_timed"]}


class _TrackingStore(LayeredStore):
    """The process store's layers, with every saved record marked ``source="pretune"``
    and reported to the run (and, with ``on_hit``, every record found in the store)."""

    def __init__(self, inner: LayeredStore, on_save: Callable[[Record, Sequence[Timing]], None],
                 on_hit: Callable[[Record], None] | None = None) -> None:
        super().__init__(inner.layers)
        self.counters = inner.counters
        self._on_save = on_save
        self._on_hit = on_hit

    def lookup(self, ident: Identity) -> Record | None:
        rec = super().lookup(ident)
        if rec is not None and self._on_hit is not None:
            self._on_hit(rec)
        return rec

    def save(self, record: Record, timings: Sequence[Timing] = ()) -> None:
        record = dataclasses.replace(record, source="pretune")
        super().save(record, timings)
        self._on_save(record, timings)


def _default_config_of(kernel: str) -> dict | None:
    from tuner.libtuner import _REGISTRY

    for t in _REGISTRY:
        if t.name == kernel:
            return t.default
    return None


def _tuned_from(record: Record, timings: Sequence[Timing]) -> Tuned:
    default = _default_config_of(record.identity.kernel)
    default_ms = None
    if default is not None:
        want = canonical_json(default)
        for t in timings:
            if canonical_json(t.config) == want:
                default_ms = t.median_ms if t.median_ms is not None else math.inf
    return Tuned(record.identity.kernel, record.identity.key, record.config, record.median_ms, default_ms, record.configs_tried)


@contextmanager
def miss_policy(name: str) -> Iterator[None]:
    """``FLAGGEMS_AUTOTUNE=name`` inside the block (the environment and settings)."""
    old = os.environ.get("FLAGGEMS_AUTOTUNE")
    os.environ["FLAGGEMS_AUTOTUNE"] = name
    settings.reload()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FLAGGEMS_AUTOTUNE", None)
        else:
            os.environ["FLAGGEMS_AUTOTUNE"] = old
        settings.reload()


def run_jobs(
    jobs: Sequence[Job],
    *,
    provider: str | Any = DEFAULT_PROVIDER,
    force: bool = False,
    progress: bool = True,
    on_job: Callable[[int, Job, bool], None] | None = None,
    stop_on_error: bool = False,
    on_record: Callable[[Record, Sequence[Timing]], None] | None = None,
    fresh: bool = True,
    compile_workers: int = 0,
    feed: Iterable[tuple[int, Job]] | None = None,
    give_up_after: int | None = None,
    started_at: float | None = None,
    ops: Collection[str] | None = None,
) -> Summary:
    """Run every job once under the ``miss`` policy (``always`` with ``force``).

    ``on_record`` gets every record the jobs tuned (with its timings) and every record
    they found already stored (without). ``fresh=False`` keeps the process's resolved keys
    (a caller running jobs one by one: with ``force`` each key is still retuned once).
    ``compile_workers`` processes compile each job's configs ahead of its benchmarks
    (``tuner.precompile``; 0: every config compiles when first timed). ``feed``, when
    given, hands out the jobs to run instead, already compiled (a device worker of
    ``run_parallel``); ``jobs`` is then only checked. ``give_up_after``: after that many jobs
    fail in a row, stop (an error entry says so): a device in a sticky error state would
    fail every job it takes. ``started_at``: the run's start (``time.time()``), from which
    the timeline's job starts count (default: this call's start). ``ops``: the ops the jobs
    (or the feed's) call, whose slow imports start in the background (default: ``jobs``').
    """
    from tuner.libtuner import clear_caches

    prov = checked_provider(provider, jobs)
    preload(prov, {j.op for j in jobs} if ops is None else ops)
    summary = Summary()
    inner = default_store()
    saved: list[Tuned] = []

    def on_save(r: Record, ts: Sequence[Timing]) -> None:
        saved.append(_tuned_from(r, ts))
        if on_record is not None:
            on_record(r, ts)

    tracking = _TrackingStore(inner, on_save, (lambda r: on_record(r, ())) if on_record is not None else None)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="job", desc="pretune", dynamic_ncols=True)
    t0 = time.perf_counter()
    started_at = time.time() if started_at is None else started_at
    set_default_store(tracking)
    if fresh:
        clear_caches()  # every key goes to the store once in this run
    in_a_row = 0
    try:
        with miss_policy("always" if force else "miss"):
            prov_name = provider if isinstance(provider, str) else prov.__name__
            source = iter(feed if feed is not None else precompile.ahead(jobs, prov_name, compile_workers, force))
            while True:
                t = time.perf_counter()
                item = next(source, None)
                summary.waited_s += time.perf_counter() - t
                if item is None:
                    break
                i, job = item
                summary.jobs += 1
                before = stats()
                t_job = time.time()
                try:
                    prov.run_job(job)
                except Exception as e:  # one bad job must not stop the others
                    if stop_on_error:
                        raise
                    summary.jobs_failed += 1
                    summary.errors.append({"job": job.describe(), "error": f"{type(e).__name__}: {e}"[:2000]})
                    log.warning("job %s failed: %s", job.describe(), e)
                    tuned_any = False
                    in_a_row += 1
                else:
                    in_a_row = 0
                    tuned_any = stats()["benchmarks_run"] > before["benchmarks_run"]
                    if tuned_any:
                        summary.jobs_tuned += 1
                    else:
                        summary.jobs_skipped += 1
                summary.timeline.append(job_entry(i, job, t_job - started_at, time.time() - t_job,
                                                  time.perf_counter() - t, before))
                if on_job is not None:
                    on_job(i, job, tuned_any)
                if bar is not None:
                    bar.set_postfix(keys=len(saved), refresh=False)
                    bar.update(1)
                if give_up_after is not None and in_a_row >= give_up_after:
                    summary.errors.append({"job": "(the rest)", "error": f"stopped: {in_a_row} jobs in a row failed"})
                    break
    finally:
        set_default_store(inner)
        if fresh:
            clear_caches()
        if bar is not None:
            bar.close()
        summary.tuned = saved
        summary.wall_s = time.perf_counter() - t0
    return summary


# -- dry run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyRequest:
    """One key a job requests: the kernel, its bucketed key, how many configs tuning it
    would time (after the kernel's pruning, for these arguments) and the benchmark time
    that takes (``LibTuner.budget_ms``)."""

    kernel: str
    key: str
    configs: int
    budget_ms: float


@dataclass
class JobKeys:
    job: Job
    keys: list[KeyRequest]
    error: str | None = None


@dataclass
class DryRun:
    """What a run of ``jobs`` would tune: every job's keys, in request order."""

    jobs: list[JobKeys] = field(default_factory=list)

    def distinct(self) -> dict[tuple[str, str], KeyRequest]:
        out: dict[tuple[str, str], KeyRequest] = {}
        for j in self.jobs:
            for k in j.keys:
                out.setdefault((k.kernel, k.key), k)
        return out

    def estimate_s(self) -> float:
        """GPU time to benchmark every distinct key once; keys already stored are skipped
        by a real run, compilation is not counted."""
        return sum(k.budget_ms for k in self.distinct().values()) / 1000

    def per_kernel(self) -> list[dict[str, Any]]:
        by: dict[str, list[KeyRequest]] = defaultdict(list)
        for k in self.distinct().values():
            by[k.kernel].append(k)
        return [{"kernel": name, "keys": len(ks), "configs": sum(k.configs for k in ks),
                 "estimate_s": round(sum(k.budget_ms for k in ks) / 1000, 1)} for name, ks in sorted(by.items())]

    def lines(self) -> list[str]:
        """Per job its new keys (a key listed under an earlier job is counted, not repeated),
        then a summary per kernel."""
        out, listed = [], set()
        for j in self.jobs:
            out.append(f"{j.job.phase or '-':<9} {j.job.describe()}")
            if j.error is not None:
                out.append(f"            FAILED: {j.error}")
            again = 0
            for k in j.keys:
                if (k.kernel, k.key) in listed:
                    again += 1
                    continue
                listed.add((k.kernel, k.key))
                out.append(f"            {k.kernel} {k.key}: {k.configs} configs")
            if again:
                out.append(f"            (+{again} keys listed above)")
        out.append("")
        width = max((len(r["kernel"]) for r in self.per_kernel()), default=6)
        out.append(f"{'kernel':<{width}} {'keys':>6} {'configs':>8} {'~GPU s':>8}")
        for r in self.per_kernel():
            out.append(f"{r['kernel']:<{width}} {r['keys']:>6} {r['configs']:>8} {r['estimate_s']:>8.1f}")
        failed = sum(j.error is not None for j in self.jobs)
        keys = self.distinct()
        out.append(
            f"{len(self.jobs)} jobs{f' ({failed} failed)' if failed else ''}, {len(keys)} distinct keys of "
            f"{len(self.per_kernel())} kernels, {sum(k.configs for k in keys.values())} configs to time: "
            f"GPU time ~{self.estimate_s():.0f} s of benchmarks (keys already stored are skipped; "
            f"compilation not counted)"
        )
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "jobs": [{"job": j.job.describe(), "phase": j.job.phase, "error": j.error,
                      "keys": [dataclasses.asdict(k) for k in j.keys]} for j in self.jobs],
            "kernels": self.per_kernel(), "keys": len(self.distinct()), "estimate_s": round(self.estimate_s(), 1),
        }


@contextmanager
def no_launches() -> Iterator[None]:
    """Every Triton kernel launch (a LibTuner's, a plain ``triton.jit`` kernel's, compiled
    or interpreted) returns without running: Triton's launch entry is stubbed, so nothing
    needs a GPU, compiles or computes."""
    from tuner import launch

    saved = [(c, c.__dict__["run"]) for c in launch.jit_classes() if "run" in c.__dict__]
    for c, _ in saved:
        c.run = lambda self, *args, **kwargs: None
    try:
        with launch.suspended():  # kernels tuner.launch already holds would launch otherwise
            yield
    finally:
        for c, run in saved:
            c.run = run


def uninitialized_runner(prov: Any) -> Callable[[Job], None]:
    """``prov.run_job`` with uninitialized inputs where the provider supports it (a dry run,
    a compile worker: nothing, not even a fill kernel, runs for the inputs)."""
    import inspect

    if "init" in inspect.signature(prov.run_job).parameters:
        return lambda job: prov.run_job(job, init=False)
    return prov.run_job


def dry_run(jobs: Sequence[Job], *, provider: str | Any = DEFAULT_PROVIDER) -> DryRun:
    """Every key each job requests, without tuning, launching or touching the tuning DB.

    Each job runs (floating inputs uninitialized) with a LibTuner resolve hook that records
    the kernel, the key and the number of candidate configs, then answers the kernel's
    default config, so the call goes on to the next kernel it reaches: a job requesting
    several kernels (a norm's backward: dx then dw; cross-entropy: the loss then its sum)
    lists them all, which aborting at the first key could not. Launches are stubbed
    (``no_launches``), so the answered config never runs; the hook answers before any
    store lookup, and the process store is a memory-only one besides, so nothing is read
    from or written to the DB. In-process caches are cleared before each job so every job
    lists each of its keys.
    """
    from tuner.libtuner import clear_caches, resolve_hook
    from tuner.store import MemoryStore, using_store

    prov = checked_provider(provider, jobs)
    run = uninitialized_runner(prov)
    sink: list[KeyRequest] = []

    def hook(tuner: Any, key: tuple, args: tuple, kwargs: dict, grid: Any) -> dict:
        n = len(tuner.candidate_configs(args, kwargs))
        sink.append(KeyRequest(tuner.name, tuner.key_json(key), n, tuner.budget_ms(n)))
        return dict(tuner.default)

    out = DryRun()
    with using_store(LayeredStore([MemoryStore()])), no_launches(), resolve_hook(hook):
        for job in jobs:
            clear_caches()
            sink.clear()
            error = None
            try:
                run(job)
            except Exception as e:  # one bad job must not hide the others
                error = f"{type(e).__name__}: {e}"[:500]
                log.warning("job %s failed: %s", job.describe(), e)
            out.jobs.append(JobKeys(job, list(dict.fromkeys(sink)), error))
    return out


# -- misses ---------------------------------------------------------------------------------
def _sql_layer(store: LayeredStore) -> Any:
    for layer in store.layers:
        if hasattr(layer, "misses"):
            return layer
    raise PretuneError("the tuning store has no SQL layer to read misses from")


def jobs_from_misses(provider: str | Any = DEFAULT_PROVIDER) -> tuple[list[Job], list[dict[str, Any]]]:
    """Jobs that replay the misses recorded for this environment, and the misses that
    have no replay (kernel, key, count)."""
    from tuner.fingerprint import current

    prov = load_provider(provider) if isinstance(provider, str) else provider
    replay = getattr(prov, "replay_job", None)
    jobs: dict[Job, None] = {}
    unreplayable = []
    for miss in _sql_layer(default_store()).misses(fingerprint=current()):
        raw = json.loads(miss.raw_args) if miss.raw_args else None
        job = replay(miss.identity.kernel, raw) if (replay is not None and raw is not None) else None
        if job is None:
            unreplayable.append({"kernel": miss.identity.kernel, "key": miss.identity.key, "count": miss.count})
        else:
            jobs.setdefault(dataclasses.replace(job, phase="miss"), None)
    return list(jobs), unreplayable


def remaining_misses() -> int:
    from tuner.fingerprint import current

    return len(_sql_layer(default_store()).misses(fingerprint=current()))


# -- several devices ------------------------------------------------------------------------
def _worker(device: str, ready: Any, db_url: str, provider: str, force: bool, queue: Any, t0: float,
            ops: Collection[str] = ()) -> None:
    """Run the jobs ``ready`` hands out (``(index, job dict)``, ``None``: no more) on one GPU;
    report when its first job came and when it finished (seconds since ``t0``, the run's
    start). ``ops``: the run's ops (their slow imports start in the background)."""
    os.environ["CUDA_VISIBLE_DEVICES"] = device  # before torch is imported in this process
    os.environ["FLAGGEMS_TUNING_DB"] = db_url
    settings.reload()
    set_default_store(None)
    from tuner.libtuner import elsewhere_tuned

    first_job_s: float | None = None

    def feed() -> Iterator[tuple[int, Job]]:
        nonlocal first_job_s
        while (item := ready.get()) is not None:
            if first_job_s is None:
                first_job_s = time.time() - t0
            yield item[0], Job.from_dict(item[1])

    try:
        with elsewhere_tuned():  # a key another device is tuning: go on, it stores the key
            s = run_jobs([], provider=provider, force=force, progress=False, feed=feed(), give_up_after=GIVE_UP_AFTER,
                         on_job=lambda i, job, tuned: queue.put(("job", device, i)), started_at=t0, ops=ops)
        for entry in s.timeline:
            entry["device"] = device
        queue.put(("done", device, s.as_dict() | {"first_job_s": first_job_s, "done_s": time.time() - t0}))
    except BaseException as e:  # report, then die
        queue.put(("error", device, f"{type(e).__name__}: {e}"))
        raise


GIVE_UP_AFTER = 5  # a device whose jobs fail this many times in a row leaves the run to the others


def op_group(job: Job) -> tuple:
    """The jobs that run the same kernels: one op, dtype, arguments and phase."""
    return job.op, job.dtype, job.args, job.phase


class Dispatch:
    """Which job each device worker runs next (``run_parallel``'s hand-out policy).

    Jobs go out near their order (from the first ``window`` not yet handed out), at most
    ``per_device`` queued on a device. A device prefers jobs of a group it ran last
    (``op_group``: the same kernels), then jobs of a group no
    other device is running; only when it has nothing queued does it take a job of a
    group another device is on. Neighbouring jobs of one op thus stay on one device: two
    devices do not compile or load the same kernels at once (what each process pays the
    first time it runs a kernel). ``takeable(i, device)`` says whether job ``i`` may go
    out now (compiled, or the pool still starting)."""

    def __init__(self, jobs: Sequence[Job], devices: Sequence[str], window: int = 32, per_device: int = 2) -> None:
        self.pending = list(range(len(jobs)))  # not handed out yet, in order
        self.group = [op_group(j) for j in jobs]
        self.running: dict[str, list[int]] = {d: [] for d in devices}  # handed out, not reported run
        self.owner: dict[tuple, str] = {}
        self.window, self.per_device = window, per_device

    def wanting(self) -> list[str]:
        """Devices with room for another job, emptiest first."""
        return sorted((d for d, r in self.running.items() if len(r) < self.per_device), key=lambda d: len(self.running[d]))

    def pick(self, device: str, takeable: Callable[[int, str], bool]) -> int | None:
        """The job ``device`` runs next (now marked handed out), or None: nothing for it now."""
        ready = [i for i in self.pending[:self.window] if takeable(i, device)]
        elsewhere = {self.group[i] for d, r in self.running.items() if d != device for i in r}
        mine = [i for i in ready if self.owner.get(self.group[i]) == device]
        free = [i for i in ready if self.group[i] not in elsewhere]
        if mine or free:
            choice = (mine or free)[0]
            self.owner[self.group[choice]] = device
        elif ready and not self.running[device]:  # idle: take another device's op (it keeps the op)
            choice = ready[0]
        else:
            return None
        self.pending.remove(choice)
        self.running[device].append(choice)
        return choice

    def ran(self, device: str, i: int) -> None:
        self.running[device].remove(i)

    def lost(self, device: str) -> None:
        """``device`` stopped (again: nothing happens): the jobs queued on it go back to the others."""
        self.pending = sorted(self.pending + self.running.pop(device, []))


def run_parallel(jobs: Sequence[Job], devices: Sequence[str], *, db_url: str, provider: str = DEFAULT_PROVIDER,
                 force: bool = False, progress: bool = True, compile_workers: int = 0) -> Summary:
    """One spawned worker per device, all writing to one DB. This process compiles the jobs
    ahead in one pool (``compile_workers`` per device, spread over the devices) and hands
    each compiled job to a device with room, a couple queued on each (``Dispatch``: the
    devices stay evenly busy with no plan made up front, and neighbouring jobs of one op
    stay on one device). Until the pool has compiled its first job, a device with nothing
    queued takes jobs uncompiled. A key two devices reach at once is tuned by the first;
    the second runs the default config and goes on (``elsewhere_tuned``). A worker that
    stops (``GIVE_UP_AFTER`` failures in a row, a crash) leaves the rest to the others;
    jobs no worker ran count as failed."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    inbox = {dev: ctx.Queue() for dev in devices}
    queue = ctx.Queue()
    ops = sorted({j.op for j in jobs})
    procs = {dev: ctx.Process(target=_worker, args=(dev, inbox[dev], db_url, provider, force, queue, time.time(), ops))
             for dev in devices}
    for p in procs.values():
        p.start()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="job", desc=f"pretune x{len(devices)}", dynamic_ncols=True)
    t0 = time.perf_counter()
    total = Summary()
    plan = Dispatch(jobs, devices)

    def pump(timeout: float | None) -> None:
        """Take the workers' messages (wait up to ``timeout`` for the first)."""
        while plan.running:
            try:
                kind, dev, payload = queue.get(timeout=timeout) if timeout else queue.get_nowait()
            except queue_mod.Empty:
                for dev, p in procs.items():  # a worker gone without a word (killed): nothing more from it
                    if not p.is_alive() and queue.empty():
                        plan.lost(dev)
                return
            timeout = None
            if kind == "job":
                if dev in plan.running:
                    plan.ran(dev, payload)
                if bar is not None:
                    bar.update(1)
                continue
            plan.lost(dev)  # it stopped: whatever it still had queued goes to the others
            if kind == "done":
                total.merge(_summary_from_dict(payload))
                total.devices[dev] = {"jobs": payload["jobs"], "wall_s": payload["wall_s"],
                                      "waited_s": payload["waited_for_compiles_s"],
                                      "first_job_s": payload["first_job_s"], "done_s": payload["done_s"]}
            else:
                total.errors.append({"job": f"worker {dev}", "error": payload})

    finished = False
    pre = precompile.Precompiler(jobs, provider, compile_workers * len(devices), force, devices, db_url)
    try:
        checked_provider(provider, jobs)  # while the workers start

        def takeable(i: int, dev: str) -> bool:
            return pre.compiled(i) or (not pre.started and not plan.running[dev])

        closed: set[str] = set()  # told there is no more
        while plan.running:
            handed = False
            for dev in plan.wanting():
                i = plan.pick(dev, takeable) if dev not in closed else None
                if i is not None:
                    inbox[dev].put((i, jobs[i].as_dict()))
                    handed = True
            if not plan.pending:
                for dev in set(plan.running) - closed:
                    inbox[dev].put(None)
                    closed.add(dev)
            pump(None if handed else 0.01)  # a message, or a compile finishing, lets more go out
        finished = True
    finally:
        pre.close()
        if not finished:  # an error or Ctrl-C here: stop the workers, do not wait on the queues
            for dev, p in procs.items():
                inbox[dev].cancel_join_thread()
                p.terminate()
        for p in procs.values():
            p.join()
        if bar is not None:
            bar.close()
    unrun = len(jobs) - total.jobs
    if unrun > 0:
        total.jobs = len(jobs)
        total.jobs_failed += unrun
        total.errors.append({"job": f"{unrun} jobs", "error": "not run, or lost with a crashed worker"})
    total.wall_s = time.perf_counter() - t0
    return total


def _summary_from_dict(d: dict[str, Any]) -> Summary:
    s = Summary(jobs=d["jobs"], jobs_tuned=d["jobs_tuned"], jobs_skipped=d["jobs_skipped"], jobs_failed=d["jobs_failed"],
                waited_s=d["waited_for_compiles_s"])
    s.tuned = [Tuned(k["kernel"], k["key"], k["config"], k["best_ms"], k["default_ms"], k["configs_tried"]) for k in d["keys"]]
    s.errors = list(d["errors"])
    s.timeline = list(d["timeline"])
    return s


# -- several machines, through tunerd's job queue ------------------------------------------
@dataclass
class DistributedRun:
    """What ``run_distributed`` did on this machine."""

    server: str
    worker: str
    env_id: str
    submitted: dict[str, int]  # submitted / already / requeued
    summary: Summary  # the jobs this worker ran and the keys it tuned
    report: Any  # tuner.jobs.WorkerReport

    def lines(self) -> list[str]:
        r, s, c = self.report, self.submitted, self.report.counts
        return [
            f"tunerd {self.server}: {s['submitted']} jobs queued by this run, {s['already']} already in the queue"
            + (f", {s['requeued']} requeued" if s.get("requeued") else ""),
            f"worker {self.worker}: ran {r.claimed} jobs ({r.done} done, {r.failed} failed"
            + (f", {r.lost} finished after their lease went to another worker" if r.lost else "")
            + f"), uploaded {r.records_uploaded} records"
            + (f" ({r.records_rejected} rejected by tunerd)" if r.records_rejected else ""),
            "queue of this environment ({}): {}".format(
                self.env_id[:8], ", ".join(f"{c.get(k, 0)} {k}" for k in ("done", "failed", "queued", "running"))),
        ]


def run_distributed(
    jobs: Sequence[Job],
    *,
    url: str,
    token: str | None = None,
    provider: str | Any = DEFAULT_PROVIDER,
    force: bool = False,
    progress: bool = True,
    worker: str | None = None,
) -> DistributedRun:
    """Submit ``jobs`` to tunerd's queue for this machine's environment, then work through
    the queue (with any other machine doing the same) until nothing is queued or running.

    Each claimed job runs like a local job (``run_jobs``) into the local DB, with tunerd as
    the bottom store layer so a key another machine tuned is a hit; the records it tuned or
    found locally are uploaded before the job is finished. ``force`` retunes stored keys
    and puts finished jobs of this workload back in the queue.
    """
    import socket

    from tuner import jobs as jq
    from tuner.fingerprint import current
    from tuner.libtuner import clear_caches
    from tuner.store.remote import RemoteStore, record_json

    prov = checked_provider(provider, jobs)
    fp = current()
    worker = worker or f"{socket.gethostname()}:{os.getpid()}"
    client = jq.JobClient(url, token)
    remote = jq.ReadOnlyRemote(url, token)
    inner = default_store()
    layered = LayeredStore([layer for layer in inner.layers if not isinstance(layer, RemoteStore)] + [remote])
    total = Summary()
    bar = None

    def run(spec: dict[str, Any]) -> jq.JobResult:
        found: dict[Identity, tuple[Record, Sequence[Timing]]] = {}

        def on_record(rec: Record, timings: Sequence[Timing]) -> None:
            if timings or rec.identity not in remote.served:  # tunerd has what it served
                found[rec.identity] = (rec, timings)

        s = run_jobs([Job.from_dict(spec)], provider=prov, force=force, progress=False, on_record=on_record, fresh=False)
        total.merge(s)
        records = [record_json(r, ts) for r, ts in found.values()]
        if s.jobs_failed:
            return jq.JobResult(ok=False, error=s.errors[0]["error"] if s.errors else "failed", records=records)
        return jq.JobResult(ok=True, records=records)

    def on_counts(counts: dict[str, int]) -> None:
        if bar is not None:
            bar.total = sum(counts.values())
            bar.n = counts.get("done", 0) + counts.get("failed", 0)
            bar.refresh()

    t0 = time.perf_counter()
    set_default_store(layered)
    clear_caches()
    try:
        specs = [j.as_dict() for j in jobs]
        submitted = client.submit(fp, specs, requeue=force) if specs else {"submitted": 0, "already": 0, "requeued": 0}
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(specs), unit="job", desc="pretune (shared queue)", dynamic_ncols=True)
        report = jq.work(client, fp, worker, run, on_counts=on_counts)
    finally:
        set_default_store(inner)
        clear_caches()
        if bar is not None:
            bar.close()
        remote.close(flush_timeout_s=0.0)
        client.close()
    total.wall_s = time.perf_counter() - t0
    return DistributedRun(server=client.url, worker=worker, env_id=fp.env_id, submitted=submitted,
                          summary=total, report=report)
