"""Running a provider's op calls without tuning, against one DB, read-only.

A workload names op calls, not keys: each LibTuner computes its own key from the
arguments it gets, so the keys a workload requests are only known by running its calls.
``gems-tunedb stats --workload`` does that to report which of them a DB holds for this
environment and kernel version (``workload_coverage``); ``gems-tunedb verify`` to re-time
stored winners on the arguments of a real call (``verify``).

The calls run under ``FLAGGEMS_AUTOTUNE=never`` with a read-only view of the DB as the
process store: nothing is benchmarked (except the stored winners ``verify`` times on
purpose, through ``LibTuner.time_config`` and so through ``tuner.bench``'s timer) and
nothing is written, not even the misses.
"""
from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tuner.fingerprint import Fingerprint
from tuner.store import Identity, LayeredStore, Miss, Record, Timing, using_store
from tuner.workload import Job

log = logging.getLogger(__name__)


class ReadOnlyStore(LayeredStore):
    """One SQL store as the process store, read-only: every lookup is remembered with
    what it found; a save raises (a probe must never write); misses are dropped."""

    def __init__(self, sql: Any) -> None:
        super().__init__([sql])
        self.found: dict[Identity, Record | None] = {}

    def lookup(self, ident: Identity) -> Record | None:
        rec = super().lookup(ident)
        self.found[ident] = rec
        return rec

    def save(self, record: Record, timings: Sequence[Timing] = ()) -> None:
        raise RuntimeError("the probe store is read-only: a tuning run reached it")

    def record_miss(self, miss: Miss) -> None:
        pass

    @property
    def errors(self) -> int:
        return sum(n for k, n in self.counters.items() if k.endswith(".errors"))


@dataclass
class JobRun:
    """One probed call: its error (None: it ran) and the keys it requested, in order."""

    job: Job
    error: str | None
    requested: list[tuple[Any, tuple]] = field(default_factory=list)  # (LibTuner, bucketed key)


# hook(job, tuner, key, args, kwargs, grid) -> a config to launch, or None (the normal path)
ProbeHook = Callable[[Job, Any, tuple, tuple, dict, Any], "dict | None"]


def run_probed(jobs: Sequence[Job], provider: Any, sql: Any, hook: ProbeHook | None = None) -> tuple[list[JobRun], ReadOnlyStore]:
    """Run each job once through ``provider.run_job`` under the ``never`` policy with
    ``sql`` as a read-only process store; every key a LibTuner resolves is recorded per
    job (and first offered to ``hook``). A failing job is recorded, never raised."""
    from tuner.libtuner import clear_caches, resolve_hook
    from tuner.pretune import miss_policy

    store = ReadOnlyStore(sql)
    runs: list[JobRun] = []
    run: JobRun | None = None

    def on_resolve(tuner: Any, key: tuple, args: tuple, kwargs: dict, grid: Any) -> dict | None:
        assert run is not None
        run.requested.append((tuner, key))
        return hook(run.job, tuner, key, args, kwargs, grid) if hook is not None else None

    with using_store(store), miss_policy("never"), resolve_hook(on_resolve):
        for job in jobs:
            run = JobRun(job, None)
            clear_caches()  # every job resolves (and so reports) each of its keys
            try:
                provider.run_job(job)
            except Exception as e:  # one failing call must not hide the others
                run.error = f"{type(e).__name__}: {e}"[:500]
                log.warning("probed call %s failed: %s", job.describe(), run.error)
            runs.append(run)
    return runs, store


# -- coverage of a workload -----------------------------------------------------------------
@dataclass(frozen=True)
class KeyCoverage:
    kernel: str
    key: str
    stored: bool
    why: str = ""  # for a missing key: what the DB has instead


@dataclass
class Coverage:
    env_id: str
    jobs: int
    failed: list[tuple[str, str]]  # (call, error)
    keys: list[KeyCoverage]
    store_errors: int = 0

    def per_kernel(self) -> list[dict[str, Any]]:
        by: dict[str, list[KeyCoverage]] = {}
        for k in self.keys:
            by.setdefault(k.kernel, []).append(k)
        return [
            {"kernel": name, "keys": len(ks), "stored": sum(k.stored for k in ks),
             "missing": [{"key": k.key, "why": k.why} for k in ks if not k.stored]}
            for name, ks in sorted(by.items())
        ]

    @property
    def stored(self) -> int:
        return sum(k.stored for k in self.keys)


def workload_coverage(jobs: Sequence[Job], sql: Any, provider: Any, here: Fingerprint | None = None) -> Coverage:
    """Which keys ``jobs`` request on this device, and whether ``sql`` serves each one:
    a row of this kernel version, this environment and a config the kernel declares."""
    from tuner.fingerprint import current

    here = here or current()
    runs, store = run_probed(jobs, provider, sql)
    seen: dict[tuple[str, str], tuple[Any, Identity]] = {}
    for r in runs:
        for tuner, key in r.requested:
            ident = tuner.identity(key)
            seen.setdefault((ident.kernel, ident.key), (tuner, ident))
    rows_of: dict[str, list[Record]] = {}
    out: list[KeyCoverage] = []
    for (kernel, key), (tuner, ident) in seen.items():
        rec = store.found.get(ident)
        if rec is not None and tuner.serves(rec):
            out.append(KeyCoverage(kernel, key, True))
            continue
        if rec is not None:
            why = f"the stored config {json.dumps(rec.config, sort_keys=True)} is not one of the kernel's configs"
        else:
            if kernel not in rows_of:
                rows_of[kernel] = sql.records(kernel=kernel)
            same_key = [x.identity for x in rows_of[kernel] if x.identity.key == key]
            if any(i.env_id == here.env_id for i in same_key):
                why = "stored only for another kernel version (the kernel or its config list changed since)"
            elif same_key:
                why = "stored only for other environments"
            else:
                why = "not tuned"
        out.append(KeyCoverage(kernel, key, False, why))
    failed = [(r.job.describe(), r.error) for r in runs if r.error is not None]
    return Coverage(here.env_id, len(runs), failed, out, store.errors)


# -- re-timing stored winners -------------------------------------------------------------
VERIFY_STATUSES = ("verified", "moved", "failed", "untimed", "stale", "unknown")


@dataclass
class Checked:
    """One stored winner and what ``verify`` made of it."""

    record: Record
    status: str  # one of VERIFY_STATUSES
    reason: str
    now: Timing | None = None
    call: str | None = None  # the call it was re-timed on

    @property
    def change(self) -> float | None:
        """Relative change of the median (+0.5: 50 % slower now)."""
        if self.now is None or self.now.median_ms is None:
            return None
        old = self.record.median_ms
        if old > 0:
            return (self.now.median_ms - old) / old
        return 0.0 if self.now.median_ms == 0 else math.inf


@dataclass
class VerifyReport:
    env_id: str
    threshold: float
    this_env: int  # records of this environment
    other_envs: int  # records of other environments: they cannot be timed here
    candidates: int  # records of this environment a call can be rebuilt for
    checked: list[Checked] = field(default_factory=list)  # the sample, re-timed or why not
    skipped: list[Checked] = field(default_factory=list)  # not sampled: stale or unknown kernels

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(VERIFY_STATUSES, 0)
        for c in self.checked + self.skipped:
            out[c.status] += 1
        return out

    @property
    def exit_code(self) -> int:
        """0: every re-timed winner within the threshold; 1: some moved (or no longer
        run); 3: nothing could be re-timed."""
        n = self.counts()
        if n["moved"] or n["failed"]:
            return 1
        return 0 if n["verified"] else 3


def _judge(rec: Record, t: Timing, threshold: float, call: str) -> Checked:
    if t.median_ms is None:
        return Checked(rec, "failed", f"the stored winner no longer runs: {t.error}", t, call)
    c = Checked(rec, "verified", "", t, call)
    change = c.change
    c.status = "moved" if change is None or abs(change) > threshold else "verified"
    c.reason = f"stored {rec.median_ms:.4g} ms, now {t.median_ms:.4g} ms ({change:+.1%})"
    return c


def verify(
    sql: Any,
    provider: Any,
    *,
    kernel: str | None = None,
    sample: int = 20,
    seed: int = 0,
    threshold: float = 0.25,
    workload_jobs: Sequence[Job] = (),
    here: Fingerprint | None = None,
) -> VerifyReport:
    """Re-time a seeded sample of ``sample`` (<= 0: all) stored winners of this
    environment on this device and flag those whose median moved by more than
    ``threshold`` (relative).

    A winner is timed on the arguments of a real call that requests its key: first the
    calls of ``workload_jobs`` (the shapes that were pretuned), then, for keys still
    untimed, the call ``provider.replay_key(kernel, key)`` rebuilds from the key alone.
    Rows whose kernel is not registered in this process, whose kernel version is stale,
    or for which no call can be rebuilt are reported with the reason, never timed.
    """
    from tuner.fingerprint import current
    from tuner.libtuner import _REGISTRY

    here = here or current()
    records = sql.records(kernel=kernel)
    mine = [r for r in records if r.identity.env_id == here.env_id]
    hashes: dict[str, set[str]] = {}
    for t in _REGISTRY:
        hashes.setdefault(t.name, set()).add(t.kernel_hash)
    replay_key = getattr(provider, "replay_key", None)
    replays: dict[tuple[str, str], Job | None] = {}

    def replay(rec: Record) -> Job | None:
        k = (rec.identity.kernel, rec.identity.key)
        if k not in replays:
            try:
                replays[k] = replay_key(*k) if replay_key is not None else None
            except Exception as e:  # a provider bug is this row's problem, not the run's
                log.warning("replay_key(%s, %s) failed: %s", *k, e)
                replays[k] = None
        return replays[k]

    report = VerifyReport(here.env_id, threshold, len(mine), len(records) - len(mine), 0)
    candidates: list[Record] = []
    for r in mine:
        i = r.identity
        known = hashes.get(i.kernel)
        if known is None and replay(r) is None:
            report.skipped.append(Checked(r, "unknown", "no kernel of this name is registered in this process"))
        elif known is not None and i.kernel_hash not in known:
            report.skipped.append(Checked(
                r, "stale", f"stored for kernel version {i.kernel_hash[:12]}, this process has "
                f"{', '.join(sorted(h[:12] for h in known))}: never served (gems-tunedb prune drops it)"))
        else:  # registered, or made on first use (generated kernels) by a call the provider can rebuild
            candidates.append(r)
    report.candidates = len(candidates)
    sampled = candidates if sample <= 0 or sample >= len(candidates) else random.Random(seed).sample(candidates, sample)
    targets = {(r.identity.kernel, r.identity.key): r for r in sampled}
    results: dict[tuple[str, str], Checked] = {}

    def hook(job: Job, tuner: Any, key: tuple, args: tuple, kwargs: dict, grid: Any) -> dict | None:
        k = (tuner.name, tuner.key_json(key))
        rec = targets.get(k)
        if rec is None or k in results:
            return None
        if tuner.kernel_hash != rec.identity.kernel_hash:
            results[k] = Checked(rec, "stale", f"stored for kernel version {rec.identity.kernel_hash[:12]}, "
                                 f"this process has {tuner.kernel_hash[:12]}: never served")
            return None
        if not tuner.serves(rec):
            results[k] = Checked(rec, "stale", f"the stored config {json.dumps(rec.config, sort_keys=True)} "
                                 "is not one of the kernel's configs: never served")
            return None
        t = tuner.time_config(dict(rec.config), key, args, kwargs, grid)
        results[k] = _judge(rec, t, threshold, job.describe())
        return rec.config if t.median_ms is not None else None

    if workload_jobs and targets:
        run_probed(workload_jobs, provider, sql, hook)
    pending = [r for r in sampled if (r.identity.kernel, r.identity.key) not in results]
    jobs: dict[Job, None] = {}
    for r in pending:
        job = replay(r)
        if job is not None:
            jobs.setdefault(job, None)
    runs = {run.job: run for run in run_probed(list(jobs), provider, sql, hook)[0]} if jobs else {}
    for r in sampled:
        k = (r.identity.kernel, r.identity.key)
        if k in results:
            report.checked.append(results[k])
            continue
        job = replay(r)
        if job is None:
            why = ("the provider has no replay_key" if replay_key is None else
                   "no call can be rebuilt from this key (the provider has no replay for this kernel, "
                   "or the key's bucketed values are not valid arguments)")
            report.checked.append(Checked(r, "untimed", why))
            continue
        run = runs[job]
        if run.error is not None:
            why = f"the rebuilt call {job.describe()} failed: {run.error}"
        else:
            other = sorted({t.key_json(key) for t, key in run.requested if t.name == r.identity.kernel})
            why = (f"the rebuilt call {job.describe()} did not request this key"
                   + (f" (it requested {', '.join(other)})" if other else " (nor any key of this kernel)"))
        report.checked.append(Checked(r, "untimed", why, call=job.describe()))
    return report
